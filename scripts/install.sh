#!/usr/bin/env bash
# Install everything mlcharge_workflows needs on a fresh Debian machine:
# Quantum ESPRESSO (pw.x + pseudopotentials), OpenBLAS, MPI, a virtual environment,
# torch==2.13.0 (CPU build) first, then the package with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need_apt=0
command -v pw.x >/dev/null 2>&1 || need_apt=1
command -v mpirun >/dev/null 2>&1 || need_apt=1
[ -d /usr/share/espresso/pseudo ] || need_apt=1
dpkg -s libopenblas0-serial >/dev/null 2>&1 || need_apt=1
if [ "$need_apt" = "1" ]; then
  echo "[install] Debian packages: quantum-espresso quantum-espresso-data libopenblas0-serial openmpi-bin"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    quantum-espresso quantum-espresso-data libopenblas0-serial openmpi-bin >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] virtual environment .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[all,test]"
echo "[install] done: $(.venv/bin/python -c 'import mlcharge_workflows as m; print(m.__file__)')"
