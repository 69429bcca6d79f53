"""The pieces that keep runs well-behaved on shared machines (training.distributed,
training.launch): the launcher chain of a real process tree, the port flags of
`deberta-launch`, the collective timeout; and the test suite's own end-of-session check
for processes and /dev/shm files left behind. The faults themselves, with real launchers
and ranks: tests/pretrain/test_shared_machine_faults.py."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from training import distributed
from training.launch import split_port

REPO = Path(__file__).resolve().parents[2]


# --- quick: the pieces ------------------------------------------------------------------------
def test_launch_takes_the_port_from_its_own_flags_only(monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert split_port(["--num_gpus", "2", "--master_port", "123", "main.py", "--master_port", "9"]) == \
        ("123", ["--num_gpus", "2", "main.py", "--master_port", "9"])
    assert split_port(["--master_port=77", "main.py", "--lr", "1"]) == ("77", ["main.py", "--lr", "1"])
    assert split_port(["--num_gpus", "2", "main.py"]) == (None, ["--num_gpus", "2", "main.py"])
    monkeypatch.setenv("MASTER_PORT", "4242")
    assert split_port(["main.py"]) == ("4242", ["main.py"])


def test_launcher_chain_of_a_real_process_tree(tmp_path):
    """A process started by a script named `deepspeed` (a launcher by its name) under a shell
    (not one): the chain holds the launcher and stops at the shell."""
    fake_launcher = tmp_path / "deepspeed"
    fake_launcher.write_text("import subprocess, sys\nsubprocess.run([sys.executable, '-c', "
                             "'import time; time.sleep(30)'])\n")
    shell = subprocess.Popen(["bash", "-c", f"{sys.executable} {fake_launcher}; true"])
    try:
        child = None
        deadline = time.time() + 20
        while child is None and time.time() < deadline:
            sleepers = [p for p in psutil.Process(shell.pid).children(recursive=True) if "time.sleep" in
                        " ".join(p.cmdline())]
            child = sleepers[0] if sleepers else time.sleep(0.1)
        assert child is not None
        chain = distributed.launcher_ancestors(child.pid)
        assert [name for _, _, name in chain] == ["deepspeed"]
        assert chain[0][0] == child.ppid() != shell.pid
    finally:
        for process in psutil.Process(shell.pid).children(recursive=True):
            process.kill()
        shell.kill()
        shell.wait()


def test_collective_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "45")
    assert distributed.collective_timeout() == datetime.timedelta(seconds=45)
    monkeypatch.delenv(distributed.TIMEOUT_ENV)
    assert distributed.collective_timeout().total_seconds() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(SystemExit, match="DEBERTA_COLLECTIVE_TIMEOUT='soon': expected a number of seconds"):
        distributed.collective_timeout()


@pytest.mark.slow
def test_the_session_fails_when_a_process_or_a_shm_file_is_left_behind(pytester, monkeypatch):
    """tests/conftest.py's end-of-session check, in a session of its own: a test that leaves
    a detached process and an unused /dev/shm file makes the session fail, naming both."""
    for name in ("conftest.py", "slurm_harness.py"):
        pytester.makepyfile(**{name.removesuffix(".py"): (REPO / "tests" / name).read_text()})
    leak = Path("/dev/shm") / f"torch_leak_test_{os.getpid()}_{time.time_ns()}"
    pytester.makepyfile(test_leaks=f"""
import subprocess
from pathlib import Path

def test_leaves_things_behind():
    subprocess.Popen(["sleep", "300"], start_new_session=True)  # reparented to init when pytest ends
    Path({str(leak)!r}).write_bytes(b"x")
""")
    monkeypatch.setenv("DEBERTA_TEST_LEFTOVER_GRACE_S", "1")
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        output = result.stdout.str()
        assert result.ret == pytest.ExitCode.TESTS_FAILED, output
        assert "1 passed" in output and "LEFT BEHIND by this test session" in output
        assert "sleep 300" in output and f"/dev/shm file {leak}" in output
    finally:
        leak.unlink(missing_ok=True)
        for process in psutil.process_iter(["cmdline", "environ"]):
            if process.info["cmdline"] == ["sleep", "300"] and process.info["environ"] and \
                    "DEBERTA_TEST_SESSION" in process.info["environ"] and \
                    process.info["environ"]["DEBERTA_TEST_SESSION"] != os.environ.get("DEBERTA_TEST_SESSION"):
                process.kill()


def test_shutdown_lets_the_world_group_and_its_threads_go():
    """After ``shutdown`` nothing holds the world group, so gloo's threads end with it, not in
    the interpreter's teardown (where, now and then, a rank that had finished aborted with
    "terminate called without an active exception"). torch._dynamo, imported by the first
    compiled or traced call, once kept the group in torch.distributed.nn's default arguments."""
    script = """
import gc, glob, weakref
import torch.distributed as dist
from training.distributed import init_distributed, shutdown

def gloo_threads():
    return [t for t in glob.glob("/proc/self/task/*") if "gloo" in open(t + "/comm").read()]

init_distributed()
import torch._dynamo  # noqa: F401
world = weakref.ref(dist.group.WORLD)
assert gloo_threads()
shutdown()
gc.collect()
assert world() is None and gloo_threads() == [], (world(), len(gloo_threads()))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DS_ACCELERATOR": "cpu",
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert result.returncode == 0, result.stderr[-3000:]
