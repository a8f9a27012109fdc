"""Cost of one embedded-LaunchPad transaction as the project grows (100 to 10,000 fireworks).

Each transaction of the embedded project (``submit/launchpad.py``) locks, loads
``launchpad.json`` into mongomock (unless this process's cached copy is current), runs the
FireWorks calls and rewrites the whole file. This script fills a project with N fireworks
of realistic size (the spec of a compare-flow firework holds a serialised jobflow job:
about 3.5 kB, as in the issue's 1,500 fireworks / 5 MB), inserted directly into the
collections (``add_wf`` one by one would take hours at 10,000), then times:

* ``cold``: a transaction after another process wrote the file (load + commit), the
  common case with several workers, and for a worker after its own previous write by
  another process;
* ``warm``: a transaction on this process's cached copy (commit only);
* ``checkout``: ``checkout_fw`` + commit, the first transaction of every firework a
  worker runs (FireWorks queries scan the mongomock collection);
* the file size.

Run: ``.venv/bin/python benchmarks/launchpad_scaling.py [--sizes 100 1000 10000] [--repeat 3]``
Prints one JSON line per size and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _fw_doc(fw_id: int, payload: str) -> dict:
    from fireworks import Firework, ScriptTask

    fw = Firework([ScriptTask.from_str("true")], spec={"job_blob": payload, "_category": ""},
                  name=f"fw {fw_id}", fw_id=fw_id)
    doc = fw.to_db_dict()
    doc["state"] = "READY"
    return doc


def fill(handle, n: int, fw_size: int = 3500) -> None:
    """Put ``n`` READY fireworks, one workflow each, into the embedded project."""
    from datetime import datetime

    payload = "x" * fw_size
    now = datetime.now().isoformat()
    template = _fw_doc(1, payload)
    with handle.transaction() as lp:
        fws, wfs = [], []
        for i in range(1, n + 1):
            d = dict(template, fw_id=i, name=f"fw {i}")
            fws.append(d)
            wfs.append({"nodes": [i], "links": {str(i): []}, "parent_links": {},
                        "name": f"wf {i}", "metadata": {}, "updated_on": now,
                        "created_on": now, "state": "READY", "fw_states": {str(i): "READY"}})
        lp.fireworks.insert_many(fws)
        lp.workflows.insert_many(wfs)
        lp.fw_id_assigner.update_one({}, {"$set": {"next_fw_id": n + 1}})


def _touch_from_outside(handle) -> None:
    """Invalidate this process's cache as another process's commit would."""
    handle._cache = None


def measure(n: int, repeat: int = 3) -> dict:
    from fireworks import FWorker

    from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad

    with tempfile.TemporaryDirectory() as tmp:
        handle = EmbeddedLaunchPad(Path(tmp) / "project")
        t0 = time.perf_counter()
        fill(handle, n)
        fill_s = time.perf_counter() - t0
        size = handle.paths.launchpad_file.stat().st_size
        cold, warm, checkout = [], [], []
        for k in range(repeat):
            _touch_from_outside(handle)
            t = time.perf_counter()
            with handle.transaction() as lp:
                lp.fireworks.update_one({"fw_id": 1}, {"$set": {"spec._touched": k}})
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            with handle.transaction() as lp:
                lp.fireworks.update_one({"fw_id": 1}, {"$set": {"spec._touched": -k}})
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            with handle.transaction() as lp:
                lp.checkout_fw(FWorker(), str(Path(tmp) / f"launch{k}"))
            checkout.append(time.perf_counter() - t)
    return {"fireworks": n, "file_MB": round(size / 1e6, 2), "fill_s": round(fill_s, 2),
            "cold_s": round(statistics.median(cold), 3),
            "warm_s": round(statistics.median(warm), 3),
            "checkout_s": round(statistics.median(checkout), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        row = measure(n, args.repeat)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| fireworks | launchpad.json | cold transaction | warm transaction | checkout |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['fireworks']:,} | {r['file_MB']} MB | {r['cold_s']} s | {r['warm_s']} s "
              f"| {r['checkout_s']} s |")


if __name__ == "__main__":
    main()
