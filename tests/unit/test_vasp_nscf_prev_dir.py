"""The NSCF arms of the VASP comparison read the SCF they are compared with (prev_dir), so
they get its spin, NBANDS, smearing and k-mesh settings; checked on the built flow."""

from __future__ import annotations

import pytest

pytest.importorskip("atomate2")


def test_every_nscf_arm_gets_the_baseline_run_as_prev_dir(sic_fcc) -> None:
    from mlcharge_workflows.common.flows import JOB_NAMES
    from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker

    flow = VaspComparisonMaker(nscf=True).make(sic_fcc, label="SiC")
    jobs = {j.name: j for j in flow.jobs}
    baseline = jobs[JOB_NAMES["baseline"]]
    nscf = [jobs[JOB_NAMES[k]] for k in ("nscf_scf", "nscf_ml", "nscf_atomic")]
    assert len(nscf) == 3
    for j in nscf:
        prev = j.function_kwargs.get("prev_dir")
        assert prev is not None, j.name
        assert prev.uuid == baseline.uuid and prev.attributes == (("a", "dir_name"),), j.name
