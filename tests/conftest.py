"""Shared test setup: markers, paths to the shared data, tiny assets, and a check at the
end of the session that nothing of ours is left behind: no process started by the session
(found by a mark in its environment, even after its parent died), no /dev/shm file of ours."""
import os
import time
from pathlib import Path

import pytest
import torch
from slurm_harness import slurm_cluster  # noqa: F401  (a fixture for the sbatch tests)

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SESSION_MARK = "DEBERTA_TEST_SESSION"  # inherited by every process the session starts
# /dev/shm names our runs create: DeepSpeed's CPU all-reduce buffers, PyTorch's shared tensors,
# multiprocessing's semaphores
SHM_PATTERNS = ("deepspeed_allreduce_buffer_*", "torch_*", "sem.mp-*")
# processes stopped by a last fixture (Slurm's daemons) take a moment
LEFTOVER_GRACE_S = float(os.environ.get("DEBERTA_TEST_LEFTOVER_GRACE_S", "20"))
pytest_plugins = ["pytester"]  # tests of this check run a session of their own


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (multi-process, training runs)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def spm_model() -> Path:
    return ASSETS / "spm.model"


def pytest_sessionstart(session):
    session.config.leftover_check = (time.time(), f"{os.getpid()}-{time.time_ns()}")
    os.environ[SESSION_MARK] = session.config.leftover_check[1]


def _marked_processes(mark: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"{SESSION_MARK}={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"pid {entry.name}: {command[:200]}")
        except OSError:  # gone, a zombie, or not ours
            continue
    return found


def _shm_leftovers(since: float) -> list[str]:
    """Files of ours created since ``since`` that no live process has mapped or open (a file in
    use belongs to a run still going, perhaps another session's)."""
    candidates = {path for pattern in SHM_PATTERNS for path in Path("/dev/shm").glob(pattern)}
    candidates = {p for p in candidates if _owned_since(p, since)}
    if not candidates:
        return []
    in_use = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                in_use.update(line.split(None, 5)[-1] for line in (entry / "maps").read_text().splitlines()
                              if "/dev/shm/" in line)
                in_use.update(os.readlink(fd) for fd in (entry / "fd").iterdir())
            except OSError:
                continue
    return sorted(str(p) for p in candidates if str(p) not in in_use and f"{p} (deleted)" not in in_use)


def _owned_since(path: Path, since: float) -> bool:
    try:
        info = path.stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and info.st_ctime >= since


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a process it started or a /dev/shm file of ours outlives it."""
    started, mark = session.config.leftover_check
    deadline = time.time() + LEFTOVER_GRACE_S
    while True:
        processes, shm = _marked_processes(mark), _shm_leftovers(started)
        if not (processes or shm) or time.time() > deadline:
            break
        time.sleep(1)
    if processes or shm:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["LEFT BEHIND by this test session (a test or the code under test does not clean up):"]
        lines += [f"  process {p}" for p in processes] + [f"  /dev/shm file {f}" for f in shm]
        for line in lines:
            reporter.write_line(line, red=True, bold=True) if reporter else print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
