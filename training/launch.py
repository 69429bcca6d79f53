"""``deberta-launch``: DeepSpeed's ``deepspeed`` launcher on a free rendezvous port.

    deberta-launch --num_gpus 2 pretrain/main.py --data_dir data/ --output_dir runs/v3 ...
    deberta-launch --hostfile hosts --num_nodes 4 pretrain/main.py ...     # any deepspeed flag
    deberta-launch --master_port 29600 pretrain/main.py ...                 # your port: no retries
    python -m training.launch ...                                           # the same

``deepspeed`` alone rendezvouses on port 29500 unless told otherwise, so a second job on
the machine fails. This wrapper picks a free port (or takes ``--master_port`` /
``MASTER_PORT``), runs ``deepspeed --master_port PORT ARGS...``, and when another process
takes the port between the choice and the bind (the ranks exit with
``training.distributed.PORT_IN_USE_EXIT``) starts again on a new port, a few times.

Signals: SIGTERM or SIGINT sent to this process reach the ranks as SIGTERM, so that they
save a checkpoint and exit (DeepSpeed's own launchers would stop them without saving).
If this process is killed outright, the ranks notice within a second and stop
(``training.distributed``). When the launcher ends, the /dev/shm buffers of its port that a
rank killed while starting could have left are removed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from training.distributed import PORT_IN_USE_EXIT, SHM_BUFFER, _launcher_name, free_port

PORT_ATTEMPTS = 5
PROGRAM = "deberta-launch"


def split_port(args: list[str]) -> tuple[str | None, list[str]]:
    """(the ``--master_port`` given before the script (``*.py``), else MASTER_PORT, else None;
    the arguments without that flag)."""
    port, kept = os.environ.get("MASTER_PORT"), []
    for i, arg in enumerate(args):
        if arg.endswith(".py"):
            return port, kept + args[i:]
        if arg.startswith("--master_port="):
            port = arg.split("=", 1)[1]
        elif arg == "--master_port" and i + 1 < len(args):
            port = args[i + 1]
        elif not (i > 0 and args[i - 1] == "--master_port"):
            kept.append(arg)
    return port, kept


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process we can see."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def ranks_below(pid: int) -> list[int]:
    """The processes below ``pid`` that are not launchers themselves: the ranks."""
    tree, ranks, stack = _children(), [], [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            if _launcher_name(child) is None:
                ranks.append(child)
            else:
                stack.append(child)
    return ranks


def remove_shm_buffers(port: str) -> None:
    for path in Path("/dev/shm").glob(f"{SHM_BUFFER}_{os.getuid()}_*_{port}_*"):
        path.unlink(missing_ok=True)


def run(args: list[str], port: str) -> int:
    """``deepspeed --master_port PORT ARGS``'s exit code (ARGS without a port); SIGTERM and
    SIGINT go to the ranks meanwhile."""
    launcher = subprocess.Popen([sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", port, *args])

    def stop_ranks(signum, frame):
        for rank in ranks_below(launcher.pid):
            try:
                os.kill(rank, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, stop_ranks) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        remove_shm_buffers(port)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: {PROGRAM} [deepspeed launcher flags] SCRIPT.py [the script's flags]\n\n{__doc__.strip()}")
        return 0 if args else 2
    chosen, args = split_port(args)
    port = chosen or str(free_port())
    for attempt in range(1, PORT_ATTEMPTS + 1):
        code = run(args, port)
        if code != PORT_IN_USE_EXIT:
            return code
        if chosen is not None:
            print(f"{PROGRAM}: port {port} is in use; leave out --master_port (and MASTER_PORT) to let "
                  f"{PROGRAM} pick a free one", file=sys.stderr, flush=True)
            return code
        if attempt < PORT_ATTEMPTS:
            port = str(free_port())
            print(f"{PROGRAM}: another process took the rendezvous port between its choice and the ranks' "
                  f"start; starting again on port {port} (attempt {attempt + 1} of {PORT_ATTEMPTS})",
                  file=sys.stderr, flush=True)
    print(f"{PROGRAM}: error: {PORT_ATTEMPTS} free ports were taken before the ranks could bind them; is "
          f"something grabbing ports on this machine?", file=sys.stderr, flush=True)
    return PORT_IN_USE_EXIT


if __name__ == "__main__":
    sys.exit(main())
