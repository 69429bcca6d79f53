"""A real one-node Slurm for tests: munged, slurmctld and slurmd started with a generated
slurm.conf, a private munge key and socket and free ports, and stopped by pid."""
from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "runuser")


def wait_for(predicate, timeout: float, what: str):
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
    pids = {"munged": wait_for(lambda: _read_pid(munge_dir / "munged.pid"), 20, "munged")}

    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=testcluster
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
        pids["slurmctld"] = wait_for(lambda: _read_pid(root / "slurmctld.pid"), 20, "slurmctld")
        subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True, timeout=30)
        pids["slurmd"] = wait_for(lambda: _read_pid(root / "slurmd.pid"), 20, "slurmd")
        wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
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


def slurm_log(root: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text()[-3000:]}" for p in sorted(root.glob("*.log")))




def wait_for_job(job: str, env: dict, timeout: float) -> str:
    """The final state of a batch job (COMPLETED, FAILED, ...)."""
    def finished():
        state = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        for word in state.split():
            if word.startswith("JobState=") and word[9:] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"):
                return word[9:]
        return None
    return wait_for(finished, timeout, f"job {job}")
