"""Faults of shared machines and launchers, for real: tiny pretraining runs on 2 CPU ranks
under the `deepspeed` launcher (or `deberta-launch` around it), with a port that another
process holds, a launcher killed with SIGKILL, a rank killed or frozen mid-run; and the
main job in quick mode, twice at once beside a held port 29500, then with changed settings."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from pretrain_helpers import (REPO, cpu_env, deepspeed_command, explain, plain_deepspeed_command, read_jsonl,
                              train_args)

from training import distributed

pytestmark = pytest.mark.slow


class HeldPort:
    """A port that another process listens on, as another job's rendezvous would."""

    def __enter__(self) -> int:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()


def start(command: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=cpu_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_steps(launcher: subprocess.Popen, output_dir: Path, steps: int, timeout: float = 240) -> None:
    metrics = output_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while not metrics.is_file() or len(read_jsonl(metrics)) < steps:
        assert launcher.poll() is None, launcher.stdout.read()[-5000:]
        assert time.time() < deadline, f"no step {steps} within {timeout} s"
        time.sleep(0.3)


def rank_process(launcher: subprocess.Popen, local_rank: int) -> psutil.Process:
    for process in psutil.Process(launcher.pid).children(recursive=True):
        if f"--local_rank={local_rank}" in process.cmdline() and \
                "deepspeed.launcher.launch" in process.parent().cmdline():
            return process
    raise AssertionError(f"rank {local_rank} not found below pid {launcher.pid}")


def our_shm(port: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"{distributed.SHM_BUFFER}_{os.getuid()}_*_{port}_*"))


def test_port_clash_is_one_line_and_deberta_launch_starts_again_elsewhere(corpus_shards, tmp_path):
    with HeldPort() as port:
        command = plain_deepspeed_command(train_args(corpus_shards, tmp_path / "plain", max_steps=2), port=port)
        plain = subprocess.run(command, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=240)
        assert plain.returncode == distributed.PORT_IN_USE_EXIT, explain(plain)
        assert f"error: rank 0: the rendezvous port 127.0.0.1:{port} is in use" in plain.stderr, explain(plain)
        assert "Traceback" not in plain.stderr + plain.stdout

        # deberta-launch's first choice is the held port (as if another job took it between the
        # choice and the bind): the ranks exit 98 and it starts again on a free port.
        choose_held_first = (f"import sys, training.launch as launch, training.distributed as d; "
                             f"ports = iter([{port}]); launch.free_port = lambda: next(ports, None) or d.free_port(); "
                             f"sys.exit(launch.main(sys.argv[1:]))")
        output_dir = tmp_path / "retried"
        retried = subprocess.run([sys.executable, "-c", choose_held_first, "--num_gpus", "2", "pretrain/main.py",
                                  *train_args(corpus_shards, output_dir, max_steps=3)],
                                 cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert retried.returncode == 0, explain(retried)
    assert f"rendezvous port 127.0.0.1:{port} is in use" in retried.stderr
    assert "starting again on port" in retried.stderr and "(attempt 2 of 5)" in retried.stderr
    assert json.loads((output_dir / "summary.json").read_text())["status"] == "completed"
    assert not our_shm(port)


def test_killed_launcher_stops_its_whole_tree_and_the_same_command_resumes(corpus_shards, tmp_path):
    args = train_args(corpus_shards, tmp_path, max_steps=10, save_interval=3, log_interval=1)
    launcher = start(plain_deepspeed_command(args))
    try:
        wait_for_steps(launcher, tmp_path, 4)
        tree = psutil.Process(launcher.pid).children(recursive=True)  # with the ranks' data loader workers
        assert rank_process(launcher, 0) in tree and rank_process(launcher, 1) in tree
        launcher.kill()  # SIGKILL: DeepSpeed's child launcher and the ranks are left to themselves
        killed = time.time()
        gone, alive = psutil.wait_procs(tree, timeout=15)
        assert not alive, f"still running {time.time() - killed:.0f} s after the launcher died: {alive}"
        output = launcher.stdout.read()
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "its launcher (deepspeed, pid" in output and "is gone; stopping" in output, output[-3000:]
    assert (tmp_path / "checkpoints" / "latest").is_file()

    rerun = subprocess.run(plain_deepspeed_command(args), cwd=REPO, env=cpu_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, explain(rerun)
    assert "resumed from" in rerun.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 10


def run_until_a_rank_fails(corpus_shards, output_dir: Path, fault, **env) -> tuple[int, str, float]:
    """Start a long run, apply ``fault`` to rank 1 after 3 steps; (exit code, output, seconds
    from the fault to the end of the whole tree)."""
    launcher = start(deepspeed_command(train_args(corpus_shards, output_dir, max_steps=100_000, log_interval=1)),
                     **env)
    try:
        wait_for_steps(launcher, output_dir, 3)
        rank = rank_process(launcher, 1)
        fault(rank)
        faulted = time.time()
        output, _ = launcher.communicate(timeout=180)
        return launcher.returncode, output, time.time() - faulted
    finally:
        if launcher.poll() is None:
            for process in psutil.Process(launcher.pid).children(recursive=True):
                process.kill()
            launcher.kill()


def test_a_rank_killed_mid_run_is_named_by_the_survivor(corpus_shards, tmp_path):
    code, output, _ = run_until_a_rank_fails(corpus_shards, tmp_path, lambda rank: rank.send_signal(signal.SIGKILL))
    assert code != 0
    # rank 0 meets the loss in a collective ("lost a peer"), or first the launcher's SIGTERM
    # to it and its data loader ("stopped (RuntimeError: DataLoader worker ...)")
    # (or, when DeepSpeed's launcher is quicker to kill rank 0 than its heartbeat check, that the
    # store it holds is being torn down)
    assert "error: rank 0: " in output, output[-5000:]
    assert "rank(s) 1 stopped answering" in output or "the rendezvous store no longer answers" in output, \
        output[-5000:]
    assert "Traceback" not in output


def test_a_frozen_rank_times_the_collective_out_and_is_named(corpus_shards, tmp_path):
    """SIGSTOP freezes rank 1 (its heartbeat too): rank 0's collective times out after
    DEBERTA_COLLECTIVE_TIMEOUT seconds instead of waiting forever, and names rank 1."""
    frozen = []

    def freeze(rank):
        rank.send_signal(signal.SIGSTOP)
        frozen.append(rank)

    try:
        code, output, seconds = run_until_a_rank_fails(corpus_shards, tmp_path, freeze, DEBERTA_COLLECTIVE_TIMEOUT="30")
    finally:
        for rank in frozen:  # the launcher's SIGTERM waits for a stopped process: end it here
            if rank.is_running():
                rank.kill()
    assert code != 0
    assert "timed out after 30 s (DEBERTA_COLLECTIVE_TIMEOUT)" in output, output[-5000:]
    assert "rank(s) 1 stopped answering" in output, output[-5000:]
    assert seconds < 120


def test_main_job_quick_twice_at_once_beside_port_29500_then_redoes_changed_stages(tmp_path):
    """`QUICK=1 bash pretrain/run_example.sh` in two work folders at once, with port 29500
    (DeepSpeed's default) held by another process: both finish. Run again with another
    VOCAB_SIZE, the job notices and redoes the tokenizer, the shards and the training."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 29500))
        holder.listen()
    except OSError:
        pass  # something already listens there, which is the point
    try:
        jobs = {name: subprocess.Popen(["bash", "pretrain/run_example.sh"], cwd=REPO,
                                       env=cpu_env(QUICK="1", WORK=str(tmp_path / name)), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
                for name in ("a", "b")}
        outputs = {name: job.communicate(timeout=900)[0] for name, job in jobs.items()}
    finally:
        holder.close()
        for job in jobs.values():
            if job.poll() is None:
                job.kill()
    for name, job in jobs.items():
        assert job.returncode == 0, outputs[name][-5000:]
        assert "validation (step 0 -> 6)" in outputs[name]
        summary = json.loads((tmp_path / name / "run" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["step"] == 6
    assert "vocab_size=2000" in (tmp_path / "a" / "tok.settings").read_text()

    again = subprocess.run(["bash", "pretrain/run_example.sh"], cwd=REPO,
                           env=cpu_env(QUICK="1", WORK=str(tmp_path / "a"), VOCAB_SIZE="1500"),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, explain(again)
    redone = [line for line in again.stdout.splitlines() if "settings changed" in line]
    assert [line.rsplit(" ", 1)[-1] for line in redone] == [str(tmp_path / "a" / stage)
                                                            for stage in ("tok", "data", "run")], again.stdout
    assert "resumed from" not in again.stdout  # a new run, not the old vocabulary's
    from deberta import load_tokenizer
    vocabulary = load_tokenizer(tmp_path / "a" / "tok").vocab_size
    assert vocabulary in (1500, 1501)  # the pieces, and [MASK] where the model adds it
    assert json.loads((tmp_path / "a" / "model" / "config.json").read_text())["config"]["vocab_size"] == vocabulary
    assert json.loads((tmp_path / "a" / "run" / "summary.json").read_text())["step"] == 6
