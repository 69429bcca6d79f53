"""Problems a user can fix, and the one way every command reports them.

Every entry point (``data_prep``, ``pretrain``, ``pretrain.convert``, ``finetune``,
``deberta.convert``) runs its work through :func:`run_command`. A :class:`UserError`
anywhere below it ends the command with one line on stderr,

    error: data/train_00003.bin: 12 bytes, the manifest says 4096; run `python -m data_prep verify data`

and the error's exit code: 1 for unusable data or files (:class:`InputError`), 2 for a
setting or command line to change (:class:`SettingsError`). The message names the file,
line or field, says what is wrong and what to do. An ``OSError`` that names a file (not
found, permission denied, disk full) is reported the same way. The traceback is printed
too with ``--debug`` on the command line or ``DEBERTA_DEBUG=1``; any other exception is a
bug and keeps its traceback.

Under a launcher every rank runs the same checks and meets the same error, so only rank 0
prints it; an error that only one rank can meet (``every_rank = False``, and a full disk)
is printed by that rank, naming it.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

DEBUG_ENV = "DEBERTA_DEBUG"
DEBUG_FLAG = "--debug"
DEBUG_HELP = f"print the traceback of an error as well (or set {DEBUG_ENV}=1)"

# The launchers' (rank, size) variables, for errors met before (or after) the process group
# exists; a rank variable counts only beside its size, as launchers set them.
_RANK_VARIABLES = (("RANK", "WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                   ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
# No space left, over quota, over the process's file-size limit: one rank's own writes may meet them.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UserError(Exception):
    """A problem the user can fix; the message says where, what and what to do."""

    exit_code = 1
    every_rank = True  # every rank meets it (set-up checks): rank 0 alone reports it


class InputError(UserError):
    """Data, a model folder or another file that cannot be used as it is (exit 1)."""

    exit_code = 1


class SettingsError(UserError):
    """A setting or command line that must change (exit 2)."""

    exit_code = 2


def debug_requested(argv: Sequence[str] = ()) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


def process_rank() -> int:
    """This process's rank in its job (0 without a launcher)."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    for rank, size in _RANK_VARIABLES:
        if os.environ.get(rank, "").isdigit() and os.environ.get(size, "").isdigit() and int(os.environ[size]) > 1:
            return int(os.environ[rank])
    return 0


def describe_os_error(error: OSError) -> str:
    """``FILE: what happened; what to do`` for the OS errors a user meets."""
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    what = error.strerror or str(error)
    if error.errno in DISK_FULL:
        what += ("; free space (or raise the quota or file-size limit) and run the same command again: "
                 "what was written before is complete, and the partial file is removed when it runs again")
    elif isinstance(error, PermissionError):
        what += "; choose a folder you can write to, or change its permissions"
    return f"{where}: {what}" if where else what


def report(error: BaseException, debug: bool) -> int:
    """Print ``error: ...`` (and the traceback when asked) on the rank that should; the exit code."""
    if isinstance(error, UserError):
        message, code, every_rank = str(error), error.exit_code, error.every_rank
    else:  # an OSError
        message, code = describe_os_error(error), 1
        every_rank = error.errno not in DISK_FULL
    rank = process_rank()
    if rank == 0 or not every_rank:
        if debug:
            traceback.print_exception(error)
        prefix = "" if every_rank or rank == 0 else f"rank {rank}: "
        print(f"error: {prefix}{message}", file=sys.stderr, flush=True)
    return code


def run_command(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
                also: tuple[type[BaseException], ...] = (), also_exit_code: int = 2) -> int:
    """``main(argv)``'s exit code, with a :class:`UserError` or a file's ``OSError`` reported
    as one line. ``also``: further exception types that this command's code raises only for
    bad settings (e.g. the model config's ``ValueError``), reported with ``also_exit_code``."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = debug_requested(argv)
    try:
        return main(argv) or 0
    except UserError as error:
        return report(error, debug)
    except OSError as error:
        # Ours carry a message and no errno; the OS's name the file. Anything else (a socket,
        # a pipe) is not about a file the user gave: keep its traceback.
        if error.filename is None and error.errno is not None and error.errno not in DISK_FULL:
            raise
        return report(error, debug)
    except also as error:  # type: ignore[misc]  (an empty tuple catches nothing)
        wrapped = SettingsError(str(error)) if also_exit_code == 2 else InputError(str(error))
        return report(wrapped.with_traceback(error.__traceback__), debug)
