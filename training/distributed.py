"""Starting and ending the process group, the same for every command, on shared machines.

``init_distributed`` runs under a launcher (deepspeed, ``deberta-launch``, torchrun, srun
via the env vars they set) or alone, as a world of one on a free port, so one engine path
serves a single device too. Around the process group it keeps a run well-behaved on a
machine that other jobs share:

- **Ports.** A rendezvous port that another job holds ends the start with one line and
  exit code ``PORT_IN_USE_EXIT`` (98, errno EADDRINUSE), which ``deberta-launch`` (and the
  Slurm scripts) answer by starting again on another free port. A world of one retries by
  itself. A rank that cannot reach the rendezvous says so, naming the address.
- **Timeouts.** Collectives time out after ``DEBERTA_COLLECTIVE_TIMEOUT`` seconds (default
  30 minutes, room for a large checkpoint save behind a barrier). When a collective fails
  (a peer closed its connection, or the timeout) a surviving rank prints which collective
  failed where, and which ranks stopped answering: every rank beats a heartbeat counter
  in the rendezvous store, and ranks whose counter stands still are named.
- **Orphans.** A rank stops when its launcher dies: the kernel kills it when its parent
  (DeepSpeed's per-node launcher) dies (``PR_SET_PDEATHSIG``), and a watchdog thread stops
  it within a second when any launcher above it (the ``deepspeed`` runner, ``deberta-launch``,
  torchrun) is gone, so that killing the command a user started stops its whole tree.
- **/dev/shm.** DeepSpeed's CPU backend reduces through shared-memory buffers that it names
  after the master address and port, ``/dev/shm/deepspeed_allreduce_buffer_UID_ADDR_PORT_RANK``,
  and never removes. Every rank maps its peers' buffers while the process group starts;
  once all ranks are past that point (a barrier), each rank unlinks its own name. The
  mappings stay valid until the processes exit, and nothing is left in /dev/shm, even after
  a kill. (A rank killed inside the start leaves its buffer; ``deberta-launch`` removes the
  buffers of its port when the launcher ends.)
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: `deberta-launch` imports this module and should start fast.
SHM_BUFFER = "deepspeed_allreduce_buffer"
PORT_IN_USE_EXIT = 98  # errno EADDRINUSE; deberta-launch starts again on another port
TIMEOUT_ENV = "DEBERTA_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
WORLD_OF_ONE_PORT_ATTEMPTS = 5
HEARTBEAT_KEY = "deberta/heartbeat/{rank}"
# Processes that start ranks: a rank stops when one of those above it is gone. Matched against
# the module after `-m` or the script's file name in the launcher's command line.
LAUNCHERS = ("deepspeed.launcher.launch", "deepspeed.launcher.runner", "deepspeed", "training.launch",
             "deberta-launch", "torch.distributed.run", "torchrun")
REPO = Path(__file__).resolve().parents[1]


def on_gpu() -> bool:
    from deepspeed.accelerator import get_accelerator
    return get_accelerator().device_name() == "cuda"


def free_port() -> int:
    """A port free now. Another process can take it before the rendezvous binds it: the
    start then fails with PORT_IN_USE_EXIT and is retried on another port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_buffer(rank: int, port: Optional[str] = None) -> Path:
    """The name DeepSpeed's CPU backend gives rank ``rank``'s all-reduce buffer."""
    return Path("/dev/shm") / (f"{SHM_BUFFER}_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
                               f"{port or os.environ.get('MASTER_PORT')}_{rank}")


def collective_timeout() -> datetime.timedelta:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SystemExit(f"error: {TIMEOUT_ENV}={value!r}: expected a number of seconds > 0 "
                         f"(the default is {DEFAULT_TIMEOUT_S})")
    return datetime.timedelta(seconds=seconds)


def init_distributed() -> tuple[int, int]:
    """(rank, world size), after the process group is up and DeepSpeed's shm names are unlinked.

    Without a launcher the rendezvous variables of a world of one are set only while the
    group starts, so that processes started later from this one (tests, tools) do not
    inherit a port that this process holds. LOCAL_RANK stays: DeepSpeed's engine reads it.
    """
    timeout = collective_timeout()
    if "RANK" in os.environ:
        _watch_launchers(int(os.environ["RANK"]))
        rank, world = _start_group(timeout)
    else:  # no launcher: a world of one, on another free port if one is taken under it
        os.environ.setdefault("LOCAL_RANK", "0")
        for attempt in range(1, WORLD_OF_ONE_PORT_ATTEMPTS + 1):
            rendezvous = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
            os.environ.update(rendezvous)
            try:
                rank, world = _start_group(timeout, retry_port=attempt < WORLD_OF_ONE_PORT_ATTEMPTS)
                break
            except PortTaken:
                continue
            finally:
                for name in rendezvous:
                    os.environ.pop(name, None)
    if world > 1:
        _Heartbeat.start(rank, world)
        _install_fault_report(rank, world, timeout)
    return rank, world


class PortTaken(Exception):
    """The world of one's port was taken between choosing and binding it."""


def _start_group(timeout: datetime.timedelta, retry_port: bool = False) -> tuple[int, int]:
    import deepspeed
    import torch.distributed as dist

    rank, address = int(os.environ["RANK"]), f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    # Groups made later (DeepSpeed's data-parallel clone of the world, ZeRO's) take torch's
    # module default, not the world group's timeout: make the default ours.
    from torch.distributed import distributed_c10d
    distributed_c10d.default_pg_timeout = timeout
    if isinstance(distributed_c10d.default_pg_nccl_timeout, datetime.timedelta):
        distributed_c10d.default_pg_nccl_timeout = timeout
    # torch.distributed.nn.functional's functions take ``group=group.WORLD`` as a default
    # argument, read when the module is imported: torch._dynamo imports it when first used, and
    # after this point that would hold the world group past ``shutdown`` until the interpreter
    # tears it down, gloo's threads with it, in no set order. Imported now, the default is None.
    import torch.distributed.nn  # noqa: F401
    try:
        deepspeed.init_distributed(timeout=timeout)
        dist.barrier()  # every rank has mapped its peers' buffers
    except RuntimeError as error:  # torch's DistError and gloo's errors are RuntimeErrors
        text = str(error)
        if "EADDRINUSE" in text or "address already in use" in text.lower():
            if retry_port:
                raise PortTaken() from error
            _fail(rank, f"the rendezvous port {address} is in use by another process (another job?). "
                        f"Start again on a free port: deberta-launch picks one (and retries), or give "
                        f"--master_port / MASTER_PORT a free one", PORT_IN_USE_EXIT)
        if _peer_lost(text):
            _fail(rank, f"the rendezvous at {address} failed at the first barrier ({_gloo_reason(text)}): another "
                        f"job is probably using port {os.environ.get('MASTER_PORT')}, or a rank died while "
                        f"starting (see its output). Start again on a free port: deberta-launch picks one",
                  PORT_IN_USE_EXIT)
        if "timed out" in text.lower() or "timeout" in text.lower():
            _fail(rank, f"could not reach the rendezvous at {address} within {timeout.total_seconds():.0f} s: "
                        f"rank 0 did not start, died, or cannot be reached there (check MASTER_ADDR/MASTER_PORT, "
                        f"the firewall, and rank 0's output)", 1)
        raise
    shm_buffer(rank).unlink(missing_ok=True)
    return dist.get_rank(), dist.get_world_size()


def _fail(rank: int, message: str, code: int) -> None:
    print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


# --- orphans ------------------------------------------------------------------------------
def _proc_stat(pid: int) -> Optional[tuple[int, int]]:
    """(parent pid, start time in clock ticks) of a live process, else None (a zombie is dead:
    a killed launcher stays one until its own parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def _launcher_name(pid: int) -> Optional[str]:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(argv[:4]):
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in LAUNCHERS:
            return argv[i + 1]
        if Path(arg).name in LAUNCHERS:
            return Path(arg).name
    return None


def launcher_ancestors(pid: int) -> list[tuple[int, int, str]]:
    """(pid, start time, name) of the launchers directly above process ``pid``, nearest first."""
    chain = []
    stat = _proc_stat(pid)
    while stat is not None and stat[0] > 1:
        parent = stat[0]
        name, stat = _launcher_name(parent), _proc_stat(parent)
        if name is None or stat is None:
            break
        chain.append((parent, stat[1], name))
    return chain


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def data_worker_init(_worker_id: int) -> None:
    """A data loader worker goes with its rank. Until the kernel's signal lands, the thread
    that hands the worker's tensors to the rank (multiprocessing's resource sharer) would
    report the rank's closed socket as a traceback: that is the rank's death, which the
    surviving ranks report in one line, so a connection error there is kept quiet."""
    die_with_parent()
    report = threading.excepthook

    def quiet_lost_rank(args):
        if not (issubclass(args.exc_type, OSError) and args.thread is not None and "_serve" in args.thread.name):
            report(args)

    threading.excepthook = quiet_lost_rank


def _watch_launchers(rank: int) -> None:
    """The kernel kills this rank when its parent dies; a thread stops it when any launcher
    above it is gone (a launcher killed with SIGKILL cannot stop its children itself)."""
    die_with_parent()
    launchers = launcher_ancestors(os.getpid())
    if not launchers:
        return

    def watch():
        while True:
            for pid, started, name in launchers:
                stat = _proc_stat(pid)
                if stat is None or stat[1] != started:
                    print(f"error: rank {rank}: its launcher ({name}, pid {pid}) is gone; stopping. Run the "
                          f"same command again to resume from the last checkpoint", file=sys.stderr, flush=True)
                    shm_buffer(rank).unlink(missing_ok=True)  # in case the launcher died during the start
                    os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


# --- a rank that dies or hangs --------------------------------------------------------------
class _Heartbeat:
    """Every rank adds 1 to its counter in the rendezvous store every ``interval`` seconds,
    through a store client of its own (the process group's is not shared across threads).
    A counter that stands still belongs to a rank that died or froze."""

    current: Optional["_Heartbeat"] = None

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        # ~500 beats per second reach the store at most, however many ranks there are
        self.interval = max(1.0, world / 500)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        import torch.distributed as dist
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                                is_master=False, timeout=datetime.timedelta(seconds=10),
                                                wait_for_workers=False)

    @classmethod
    def start(cls, rank: int, world: int) -> None:
        cls.current = cls(rank, world)
        threading.Thread(target=cls.current.beat, name="heartbeat", daemon=True).start()

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with self.lock:
                    self.store.add(HEARTBEAT_KEY.format(rank=self.rank), 1)
            except RuntimeError:
                return  # rank 0, which holds the store, is gone or ending: a collective will say so

    def counters(self) -> list[int]:
        with self.lock:
            return [self.store.add(HEARTBEAT_KEY.format(rank=r), 0) for r in range(self.world)]

    def silent_ranks(self) -> list[int]:
        """Ranks whose heartbeat did not move during 2.5 intervals. RuntimeError: the store is gone."""
        before = self.counters()
        time.sleep(2.5 * self.interval)
        after = self.counters()
        return [r for r in range(self.world) if r != self.rank and after[r] == before[r]]


_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused")


def _peer_lost(text: str) -> bool:
    return any(marker in text for marker in _PEER_LOST)


def _gloo_reason(text: str) -> str:
    for marker in _PEER_LOST:
        if marker in text:
            return marker.lower()
    return text.split("] ", 1)[-1].split(". ")[0]


def _failed_collective(error: BaseException) -> tuple[str, str]:
    """(the torch.distributed function that failed, where our code called it)."""
    collective, where = "a collective", "?"
    for frame, line in traceback.walk_tb(error.__traceback__):
        path = frame.f_code.co_filename
        if f"{os.sep}torch{os.sep}distributed{os.sep}" in path and not frame.f_code.co_name.startswith("_"):
            collective = frame.f_code.co_name
        elif path.startswith(str(REPO) + os.sep):
            where = f"{Path(path).relative_to(REPO)}:{line} ({frame.f_code.co_name})"
    return collective, where


def _missing_ranks(rank: int) -> tuple[list[int], Optional[str]]:
    """(ranks whose heartbeat stands still, or [] when all answer; a line when the store is gone)."""
    heartbeat = _Heartbeat.current
    if heartbeat is None:
        return [], None
    try:
        return heartbeat.silent_ranks(), None
    except RuntimeError:
        if rank == 0:  # the store lives in this process: it is being torn down with the job
            return [], ("the rendezvous store no longer answers (the launcher is stopping the job after another "
                        "rank died); the other ranks' output says which")
        return [], (f"rank 0, which holds the rendezvous store at {os.environ.get('MASTER_ADDR')}:"
                    f"{os.environ.get('MASTER_PORT')}, is gone: it died or its node failed; its output says why")


def describe_failure(error: BaseException, rank: int, timeout: datetime.timedelta) -> Optional[str]:
    """One line for an error that a lost or silent peer explains: a collective that failed
    (a peer closed its connection, or the timeout), or any error met while another rank is
    gone (the launcher then stops the survivors: SIGTERM to them and their data loaders).
    None when no peer is missing and no collective failed: a bug of its own, for a traceback."""
    text = str(error)
    timed_out = "Timed out" in text or "timed out" in text or "Timeout" in text
    collective_failed = isinstance(error, RuntimeError) and (_peer_lost(text) or timed_out)
    silent, store_gone = _missing_ranks(rank)
    interval = _Heartbeat.current.interval if _Heartbeat.current else 1.0
    if silent:
        who = (f"rank(s) {', '.join(map(str, silent))} stopped answering (no heartbeat for {2.5 * interval:.0f} s): "
               f"they died or froze; their output says why")
    elif store_gone:
        who = store_gone
    elif collective_failed:
        who = ("every other rank still answers: one is stuck outside the collectives (a data loader, a file "
               "system); `py-spy dump --pid PID` shows where")
    else:
        return None
    if collective_failed:
        collective, where = _failed_collective(error)
        what = (f"{collective} in {where} timed out after {timeout.total_seconds():.0f} s ({TIMEOUT_ENV})"
                if timed_out else f"{collective} in {where} lost a peer ({_gloo_reason(text)})")
    else:
        what = f"stopped ({type(error).__name__}: {text.splitlines()[0] if text else ''})"
    return f"error: rank {rank}: {what}: {who}. Start the same command again to resume from the last checkpoint"


def _install_fault_report(rank: int, world: int, timeout: datetime.timedelta) -> None:
    """An uncaught error that a lost peer explains ends the rank with one line instead of a traceback."""
    previous = sys.excepthook

    def report(kind, error, tb):
        if not isinstance(error, Exception):  # KeyboardInterrupt: asked for
            return previous(kind, error, tb)
        # The launcher terminates the survivors of a dead rank: finish the report first.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        message = describe_failure(error, rank, timeout)
        if message is None:
            return previous(kind, error, tb)
        from deberta.errors import debug_requested
        if debug_requested(sys.argv):
            traceback.print_exception(kind, error, tb)
        print(message, file=sys.stderr, flush=True)

    sys.excepthook = report


def device() -> torch.device:
    import torch
    from deepspeed.accelerator import get_accelerator
    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        return torch.device("cuda", accelerator.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Through DeepSpeed, which also drops its references to the groups (so a second run in
    the same process, as in tests, starts clean). Called from a ``finally``."""
    import deepspeed.comm
    import torch.distributed as dist
    normal_end = sys.exc_info()[1] is None
    if _Heartbeat.current is not None and normal_end:
        # A normal end: stop beating before rank 0's store closes. During an error the beat goes
        # on, so that the other ranks' reports do not count this one as gone.
        _Heartbeat.current.stopped.set()
    if dist.is_initialized():
        deepspeed.comm.destroy_process_group()
        if normal_end:
            # The groups end with their last reference, cycles of a finished engine's objects
            # included: collected here, while the interpreter is whole, not in its teardown.
            # (During an error the rank's report comes first; see _install_fault_report.)
            gc.collect()
