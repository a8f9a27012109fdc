#!/usr/bin/env bash
# One command for a fresh Debian machine: install everything, then run the main job on the
# embedded default (Quantum ESPRESSO, file-backed FireWorks LaunchPad and jobflow store,
# the shipped density model): baseline vs ML-started SCF (and the oracle restart) on three
# example structures, then the savings report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MLCHARGE_PROJECT_DIR=${MLCHARGE_PROJECT_DIR:-$PWD/mlcharge_project}
MLC=.venv/bin/mlcharge
$MLC submit workflows/structures/Si.cif workflows/structures/SiC.cif workflows/structures/Ni.cif \
  --engine qe --flow compare --oracle
$MLC worker
$MLC report --output "$MLCHARGE_PROJECT_DIR/report.html"
$MLC report --output "$MLCHARGE_PROJECT_DIR/report.csv"
echo "report: $MLCHARGE_PROJECT_DIR/report.html"
