#!/usr/bin/env bash
# Run the test suite (real pw.x on small cells; VASP through atomate2's mock), the
# package's >>> examples (doctests) and the documentation build (a broken link or a page
# missing from the navigation fails it).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_MCA_rmaps_base_oversubscribe=1
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
.venv/bin/mkdocs build --strict --quiet --site-dir "$site"
.venv/bin/python -m pytest -n 2 -q -p no:cacheprovider --doctest-modules \
  src/mlcharge_workflows tests "$@"
