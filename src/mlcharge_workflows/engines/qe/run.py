"""Run pw.x through MPI, with clear errors when it is missing or crashes.

:func:`run_pw` starts the process; :func:`write_and_run` writes a protocol's input for a
structure, runs it and parses the output.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlcharge_workflows.engines.qe.parse import parse_pw_output
from mlcharge_workflows.engines.qe.sets import PREFIX, QEProtocol, pw_input, write_pw_input
from mlcharge_workflows.settings import MLChargeSettings

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: pw.x exit status of a run that stopped at ``electron_maxstep`` without converging
#: (also the status of the zero-step dry run that writes data-file-schema.xml).
EXIT_NOT_CONVERGED = 2
#: Seconds between two looks of a ``watch`` at the output of a running pw.x.
WATCH_EVERY_S = 0.25
#: pw.x stops gracefully when this file appears in its working folder (QE's ``check_stop``).
EXIT_FILE = f"{PREFIX}.EXIT"


def _tail(path: Path, n_lines: int = 25) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n_lines:])


#: glibc malloc settings for pw.x (each applies unless already set in the environment).
#: pw.x allocates and frees its large work arrays every iteration; by default glibc serves
#: them with fresh mmap()s, so every page is faulted in and zeroed again by the kernel.
#: Measured on this 2-core VM (l12-Fe3Ni, 4 atoms, nspin 2, 19 iterations, pw.x 6.7 alone):
#: 2.0 M minor page faults, 17.8 s user + 7.0 s system, 25.2 s wall by default; with these
#: settings 38 k faults, 16.9 s user + 0.35 s system, 17.5 s wall. Results are unchanged.
PW_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),  # glibc's largest allowed threshold
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
    "MALLOC_TOP_PAD_": str(256 * 1024 * 1024),
}


def pw_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a pw.x run: ``base`` (default ``os.environ``) plus :data:`PW_MALLOC_ENV`
    for the keys it does not set (``MLCHARGE_PW_MALLOC=0`` leaves the environment alone)."""
    env = dict(os.environ if base is None else base)
    if env.get("MLCHARGE_PW_MALLOC", "1") != "0":
        for key, value in PW_MALLOC_ENV.items():
            env.setdefault(key, value)
    return env


def pw_command(nprocs: int | None = None, input_file: str = "pw.in") -> list[str]:
    """The command line of one pw.x run, from ``MLCHARGE_MPI_CMD``/``PW_CMD``/``QE_NPROCS``.

    Settings are read from the environment at each call. ``RuntimeError`` if pw.x or the MPI
    launcher cannot be found.
    """
    settings = MLChargeSettings()
    nprocs = settings.qe_nprocs if nprocs is None else int(nprocs)  # 0 is refused, not "default"
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    pw = shlex.split(settings.pw_cmd)
    if not pw or shutil.which(pw[0]) is None:
        raise RuntimeError(
            f"pw.x not found: MLCHARGE_PW_CMD={settings.pw_cmd!r} is not an executable on PATH; "
            "install Debian's quantum-espresso package or set MLCHARGE_PW_CMD"
        )
    mpi = shlex.split(settings.mpi_cmd.format(nprocs=nprocs)) if settings.mpi_cmd.strip() else []
    if mpi and shutil.which(mpi[0]) is None:
        raise RuntimeError(
            f"MPI launcher not found: MLCHARGE_MPI_CMD={settings.mpi_cmd!r}; install an MPI "
            "(Debian: openmpi-bin) or set MLCHARGE_MPI_CMD='' to run pw.x serially"
        )
    return [*mpi, *pw, "-in", input_file]


#: ``prctl`` option that asks the kernel to signal a process when its parent dies.
_PR_SET_PDEATHSIG = 1


_PRCTL: list = []


def _prctl():
    """libc's ``prctl`` (resolved in the parent: no ``dlopen`` between fork and exec)."""
    if not _PRCTL:
        try:
            _PRCTL.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):  # not Linux: no parent-death signal
            _PRCTL.append(None)
    return _PRCTL[0]


def _tie_to_parent(parent_pid: int, prctl) -> None:
    """``preexec_fn`` of a DFT process: die (SIGTERM) when the Python that started it dies.

    Runs in the child between fork and exec. SIGTERM, not SIGKILL: ``mpirun`` passes it on
    to its ranks before it exits, so the whole run goes. If the parent died before the
    ``prctl`` took effect, exit at once.
    """
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (pw.x, mpirun and its ranks), SIGKILL after
    ``grace_s``; returns when ``proc`` is reaped."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            # ranks of a dead mpirun may linger in the group for a moment
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return


def _wait(proc: subprocess.Popen, timeout: float | None, poll: Callable[[], None] | None,
          poll_s: float) -> int:
    """``proc.wait(timeout)``, calling ``poll()`` every ``poll_s`` seconds while it runs."""
    if poll is None:
        return proc.wait(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = poll_s if deadline is None else min(poll_s, max(deadline - time.monotonic(), 0.0))
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout) from None
        poll()


def run_tied(cmd: list[str], timeout: float | None = None, poll: Callable[[], None] | None = None,
             poll_s: float = 1.0, **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for DFT codes whose processes must never outlive this Python.

    The command runs in its own process group (a Ctrl-C of the terminal reaches only this
    Python, which then stops the whole group) with a parent-death signal (SIGTERM when this
    process dies, even by SIGKILL; ``mpirun`` forwards it to its ranks). On a timeout, an
    exception or an interrupt the whole group is terminated before this returns or raises.
    ``poll`` (if given) is called every ``poll_s`` seconds while the command runs.
    """
    prctl = _prctl()
    proc = subprocess.Popen(cmd, process_group=0,
                            preexec_fn=lambda pid=os.getpid(): _tie_to_parent(pid, prctl),
                            **popen_kwargs)
    try:
        returncode = _wait(proc, timeout, poll, poll_s)
    except BaseException:  # timeout, KeyboardInterrupt, SIGTERM turned into an exception
        kill_group(proc)
        raise
    # a clean exit of mpirun leaves no rank behind; a crashed one may: clear the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, returncode)


def run_pw(
    directory: str | Path,
    input_file: str = "pw.in",
    output_file: str = "pw.out",
    nprocs: int | None = None,
    ok_returncodes: tuple[int, ...] = (0,),
    timeout: float | None = None,
    watch: Callable[[str], bool] | None = None,
) -> Path:
    """Run pw.x in ``directory`` on ``input_file``; stdout and stderr go to ``output_file``.

    Parameters
    ----------
    directory
        Run folder (holds the input, ``pseudo/`` and ``out/``).
    nprocs
        MPI processes; ``None`` uses ``MLCHARGE_QE_NPROCS``.
    ok_returncodes
        Exit statuses that count as success (the zero-step dry run exits with 2).
    watch
        Called every :data:`WATCH_EVERY_S` seconds with the output so far; when it returns True, pw.x is
        asked to stop (the file ``<prefix>.EXIT`` in the run folder, pw.x's own graceful
        stop: it ends the SCF after the iteration in progress, writes its data and exits
        with status 2, as at ``electron_maxstep``).

    Returns
    -------
    Path
        The output file.

    Raises
    ------
    RuntimeError
        pw.x or MPI missing, or pw.x exited with another status; the message holds the
        tail of the output and the CRASH file when pw.x wrote one.
    """
    directory = Path(directory)
    if not (directory / input_file).is_file():
        raise FileNotFoundError(f"pw.x input {directory / input_file} does not exist")
    cmd = pw_command(nprocs, input_file)
    out_path = directory / output_file
    crash = directory / "CRASH"
    crash.unlink(missing_ok=True)
    exit_file = directory / EXIT_FILE
    exit_file.unlink(missing_ok=True)  # a stale one would stop this run at once
    poll = None
    if watch is not None:
        def poll() -> None:
            if not exit_file.exists() and watch(out_path.read_text(errors="replace")):
                exit_file.touch()
    try:
        with open(out_path, "w") as out:
            proc = run_tied(cmd, cwd=directory, stdout=out, stderr=subprocess.STDOUT,
                            timeout=timeout, env=pw_environment(), poll=poll,
                            poll_s=WATCH_EVERY_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"pw.x in {directory} ran past {timeout} s and was stopped\n{_tail(out_path)}"
        ) from exc
    except OSError as exc:
        raise RuntimeError(f"could not start {' '.join(cmd)}: {exc}") from exc
    finally:
        exit_file.unlink(missing_ok=True)
    if proc.returncode not in ok_returncodes:
        msg = [f"pw.x failed in {directory} (exit status {proc.returncode}): {' '.join(cmd)}"]
        if crash.is_file():
            msg.append("CRASH file:\n" + _tail(crash, 20))
        msg.append(f"end of {output_file}:\n" + _tail(out_path))
        raise RuntimeError("\n".join(msg))
    return out_path


def write_and_run(
    structure: Structure,
    directory: Path,
    protocol: QEProtocol,
    nprocs: int | None,
    stem: str,
    ok_returncodes: tuple[int, ...] = (0, EXIT_NOT_CONVERGED),
    watch: Callable[[str], bool] | None = None,
    **input_kw,
) -> tuple[float, object, list]:
    """Write ``<stem>.in`` for ``structure`` and run pw.x on it in ``directory``.

    Returns ``(elapsed_s, parsed output, k-point grid)``; ``RuntimeError`` (with the end of
    the output) when pw.x stopped without ``JOB DONE``. ``watch``: see :func:`run_pw`.
    """
    pwin = pw_input(structure, protocol, **input_kw)
    write_pw_input(pwin, directory / f"{stem}.in")
    t0 = time.perf_counter()
    out = run_pw(directory, f"{stem}.in", f"{stem}.out", nprocs=nprocs, ok_returncodes=ok_returncodes,
                 watch=watch)
    elapsed = time.perf_counter() - t0
    parsed = parse_pw_output(out)
    if not parsed.job_done:
        tail = "\n".join(out.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"pw.x stopped without 'JOB DONE' in {directory}:\n{tail}")
    return elapsed, parsed, [list(k) if isinstance(k, tuple) else k for k in pwin.kpoints_grid]
