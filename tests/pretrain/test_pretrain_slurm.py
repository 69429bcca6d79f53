"""`sbatch slurm/pretrain_xxlarge.sh`, scaled down to one node, 2 tasks and a tiny model,
under a real one-node Slurm that this test starts (munged, slurmctld, slurmd with a
generated slurm.conf, a private munge socket and free ports) and stops by pid."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pretrain_helpers import REPO, TINY_MODEL, cpu_env, free_port, read_jsonl

pytestmark = pytest.mark.slow
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "runuser")


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _read_pid(path: Path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.fixture
def slurm_cluster(tmp_path):
    missing = [d for d in BINARIES if shutil.which(d) is None]
    if missing:
        pytest.skip(f"Slurm/munge binaries not installed ({', '.join(missing)}): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    try:
        munge_user = pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("no 'munge' user (install the munge package)")
    root = tmp_path / "slurm"
    for d in (root / "state", root / "spool"):
        d.mkdir(parents=True)
    # munged runs as the munge user: its key and socket live in a folder of its own, in
    # /tmp (pytest's folders are private to root) and short (a socket path has <= 107 bytes).
    munge_dir = Path(tempfile.mkdtemp(prefix="munge-", dir="/tmp"))
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    for path in (munge_dir, key):
        os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
    munge_dir.chmod(0o755)  # munged wants its socket's folder searchable by all
    socket_path = munge_dir / "munge.socket"
    subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={socket_path}", f"--key-file={key}",
                    f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
                    f"--seed-file={munge_dir / 'munged.seed'}"], check=True, timeout=30)
    pids = {"munged": _wait_for(lambda: _read_pid(munge_dir / "munged.pid"), 20, "munged")}

    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=pretraintest
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30)
        pids["slurmctld"] = _wait_for(lambda: _read_pid(root / "slurmctld.pid"), 20, "slurmctld")
        subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True, timeout=30)
        pids["slurmd"] = _wait_for(lambda: _read_pid(root / "slurmd.pid"), 20, "slurmd")
        _wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                                   text=True).stdout, 60, "the node to become idle")
        yield env, root
    finally:
        for name in ("slurmd", "slurmctld", "munged"):
            if name in pids:
                try:
                    os.kill(pids[name], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        shutil.rmtree(munge_dir, ignore_errors=True)


def _log(root: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text()[-3000:]}" for p in sorted(root.glob("*.log")))


def test_sbatch_pretrain_xxlarge_scaled_down(slurm_cluster, corpus_shards, tmp_path):
    env, root = slurm_cluster
    output_dir = tmp_path / "run"
    job_env = {**cpu_env(), **env, "MODEL_CONFIG": "deberta-v2-xxlarge", "DS_CONFIG": "ds_configs/zero2.json",
               "DATA_DIR": str(corpus_shards), "OUTPUT_DIR": str(output_dir), "MAX_STEPS": "6",
               "GLOBAL_BATCH": "8", "MICRO_BATCH": "4",
               "EXTRA_ARGS": f"--set_model {TINY_MODEL},conv_kernel_size=3 --warmup_steps 1 --log_interval 2 "
                             f"--eval_interval 6 --eval_samples 16 --num_workers 0 --tensorboard false"}
    submit = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gres=none",
                             "--cpus-per-task=1", "--time=10", f"--output={tmp_path / 'job.out'}",
                             "slurm/pretrain_xxlarge.sh"], cwd=REPO, env=job_env, capture_output=True, text=True,
                            timeout=30)
    assert submit.returncode == 0, submit.stderr + _log(root)
    job = submit.stdout.strip().split(";")[0]

    def finished():
        state = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        for word in state.split():
            if word.startswith("JobState=") and word[9:] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return word[9:]
        return None

    state = _wait_for(finished, 300, f"job {job}")
    output = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").is_file() else ""
    assert state == "COMPLETED", f"{state}\n{output[-6000:]}\n{_log(root)}"
    assert "1 nodes, 2 ranks" in output
    steps = read_jsonl(output_dir / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 7))
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["consumed_samples"] == 6 * 8
    assert (output_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"
