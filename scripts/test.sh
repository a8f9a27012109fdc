#!/usr/bin/env bash
# Run the test suite (real pw.x on small cells; VASP through atomate2's mock).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_MCA_rmaps_base_oversubscribe=1
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider tests "$@"
