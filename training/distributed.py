"""Starting and ending the process group, the same for every command.

``init_distributed`` runs under a launcher (deepspeed, torchrun, srun via the env vars
they set) or alone, as a world of one on a free port, so one engine path serves a single
device too.

DeepSpeed's CPU backend reduces through shared-memory buffers that it names after the
master address and port, ``/dev/shm/deepspeed_allreduce_buffer_UID_ADDR_PORT_RANK``, and
never removes. Every rank maps its peers' buffers while the process group starts; once
all ranks are past that point (a barrier), each rank unlinks its own name. The mappings
stay valid until the processes exit, and nothing is left in /dev/shm, even after a kill.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

SHM_BUFFER = "deepspeed_allreduce_buffer"


def on_gpu() -> bool:
    from deepspeed.accelerator import get_accelerator
    return get_accelerator().device_name() == "cuda"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """(rank, world size), after the process group is up and DeepSpeed's shm names are unlinked.

    Without a launcher the rendezvous variables of a world of one are set only while the
    group starts, so that processes started later from this one (tests, tools) do not
    inherit a port that this process holds. LOCAL_RANK stays: DeepSpeed's engine reads it.
    """
    rendezvous = {}
    if "RANK" not in os.environ:  # no launcher: a world of one
        rendezvous = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        os.environ.update(rendezvous, LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
    import deepspeed
    import torch.distributed as dist

    try:
        deepspeed.init_distributed()
        rank, world = dist.get_rank(), dist.get_world_size()
        dist.barrier()  # every rank has mapped its peers' buffers
        shm = Path("/dev/shm") / (f"{SHM_BUFFER}_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
                                  f"{os.environ.get('MASTER_PORT')}_{rank}")
        shm.unlink(missing_ok=True)
    finally:
        for name in rendezvous:
            os.environ.pop(name, None)
    return rank, world


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator
    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        return torch.device("cuda", accelerator.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Through DeepSpeed, which also drops its references to the groups (so a second run in
    the same process, as in tests, starts clean)."""
    import deepspeed.comm
    import torch.distributed as dist
    if dist.is_initialized():
        deepspeed.comm.destroy_process_group()
