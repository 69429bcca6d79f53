"""Compile-time resource use of the fused disentangled-attention kernels, without a GPU.

    python -m bench.kernel_resources                       # sm_90 and sm_80, head sizes 64 and 128
    python -m bench.kernel_resources --arch 90 --head_dim 64 --layout padded --kernel forward --current_only

Triton's own compiler and the ptxas it bundles build the forward, backward-key and
backward-query kernels (``deberta/kernels/disentangled_attention.py``) for each GPU
architecture on this CPU machine, bf16 with both relative terms, a key mask (padded) or
``cu_seqlens`` (varlen) and dropout: the most demanding build the model launches. For each
build ``ptxas -v`` reports the registers per thread, the bytes spilled to local memory
(stores and loads), the stack frame, and Triton reports the shared memory it allocates.

Every build uses the tiles ``_blocks`` picks on a GPU of that architecture (``current``);
on the padded layout, a few other tile configurations are built too, and the one with the
least spilling that fits the architecture's shared memory is printed per architecture and
head size. These are compile-time figures only: spilling costs local-memory traffic in the
inner loop, but only a GPU run (``bash bench/gpu_check.sh``) measures speed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import add_json_argument, command_line, write_result

KERNELS = ("forward", "backward_key", "backward_query")
LAYOUTS = ("padded", "varlen")
# Largest shared memory one block may allocate (opt-in), bytes: H100/H200 and A100.
SHARED_MEMORY_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# Kernel pointers that are not in the attention's dtype, and the float scalars.
POINTER_TYPES = {"TABLE": "*i32", "POSITIONS": "*i32", "INVERSE": "*i32", "KEY_MASK": "*i8", "QUERY_MASK": "*i8",
                 "CU_SEQLENS": "*i32", "LSE": "*fp32", "DELTA": "*fp32", "DPOS_QUERY": "*fp32", "DPOS_KEY": "*fp32"}
FLOAT_SCALARS = {"dropout_p", "scale", "scale_log2"}
LOCAL_MEMORY = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass(frozen=True)
class Tiles:
    """What ``_blocks`` returns: BLOCK_M = BLOCK_N, the distance WINDOW, warps, pipeline stages."""
    block: int
    window: int
    warps: int
    stages: int

    def __str__(self) -> str:
        return f"{self.block}x{self.block} w{self.window} {self.warps} warps {self.stages} st"


def current_tiles(head_dim: int) -> Tiles:
    """What ``_blocks`` picks on the architectures measured here (A100, H100: both have more
    than 128 KB of shared memory per block)."""
    from deberta.kernels.disentangled_attention import gpu_tiles

    return Tiles(*gpu_tiles(head_dim, min(SHARED_MEMORY_LIMIT.values())))


def candidate_tiles(head_dim: int) -> list[Tiles]:
    """The current tiles first, then the alternatives worth timing: smaller tiles (fewer live
    values per thread), fewer pipeline stages (less shared memory), more warps (fewer
    accumulator registers per thread)."""
    if head_dim <= 64:
        others = [Tiles(32, 64, 4, 2), Tiles(64, 128, 4, 1), Tiles(64, 128, 8, 2)]
    else:
        others = [Tiles(32, 64, 4, 1), Tiles(32, 64, 4, 2), Tiles(64, 128, 8, 2)]
    return [current_tiles(head_dim)] + others


@dataclass(frozen=True)
class Build:
    arch: int
    head_dim: int
    layout: str
    kernel: str
    tiles: Tiles


def ptxas_path() -> Path | None:
    """Triton's bundled ptxas, or None without Triton or its NVIDIA backend."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.is_file() else None


def compile_kernel(build: Build):
    """The kernel built by Triton for ``build.arch`` (its cubin, PTX and metadata)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from deberta.kernels import disentangled_attention as kernels

    if kernels.INTERPRETED:
        raise SystemExit("TRITON_INTERPRET is set: unset it to compile the kernels for a GPU")
    kernel = getattr(kernels, f"_{build.kernel}_kernel")
    tiles, varlen = build.tiles, build.layout == "varlen"
    # What the model's bf16 call passes (kernels._flags): both relative terms, dropout, and
    # a key mask on padded batches; packed batches carry cu_seqlens instead.
    constants = dict(HAS_C2P=True, HAS_P2C=True, HAS_KEY_MASK=not varlen, HAS_QUERY_MASK=False,
                     QUERY_POSITIONS=False, DROPOUT=True, VARLEN=varlen, BLOCK_M=tiles.block, BLOCK_N=tiles.block,
                     HEAD_DIM=build.head_dim, WINDOW=tiles.window, PRECISION="tf32")
    signature = {name: "constexpr" if name in constants else POINTER_TYPES.get(name, "*bf16") if name.isupper()
                 else "fp32" if name in FLOAT_SCALARS else "i32" for name in kernel.arg_names}
    return triton_compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", build.arch, 32),
                          options=dict(num_warps=tiles.warps, num_stages=tiles.stages))


def ptxas_report(ptx: str, arch: int) -> dict:
    """Registers, stack and spill bytes as ``ptxas -v`` reports them for the PTX Triton made
    (Triton runs the same ptxas on it, with the same target, to make its cubin)."""
    gpu = "sm_90a" if arch == 90 else f"sm_{arch}"  # Triton targets sm_90a on Hopper
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx, encoding="utf-8")
        done = subprocess.run([str(ptxas_path()), "-v", f"--gpu-name={gpu}", str(source),
                               "-o", str(Path(folder) / "kernel.o")], capture_output=True, text=True)
    local, registers = LOCAL_MEMORY.search(done.stderr), REGISTERS.search(done.stderr)
    if done.returncode or not local or not registers:
        raise RuntimeError(f"ptxas -v for sm_{arch} gave no resource report: {done.stderr.strip()[-500:]}")
    stack, spill_stores, spill_loads = map(int, local.groups())
    registers = int(registers.group(1))
    return dict(registers=registers, stack_bytes=stack, spill_store_bytes=spill_stores, spill_load_bytes=spill_loads)


def measure(build: Build) -> dict:
    started = time.perf_counter()
    built = compile_kernel(build)
    shared = built.metadata.shared
    return dict(arch=build.arch, head_dim=build.head_dim, layout=build.layout, kernel=build.kernel,
                tiles=asdict(build.tiles), current=build.tiles == current_tiles(build.head_dim),
                **ptxas_report(built.asm["ptx"], build.arch), shared_bytes=shared,
                shared_fits=shared <= SHARED_MEMORY_LIMIT[build.arch],
                compile_seconds=round(time.perf_counter() - started, 1))


def plan(args) -> list[Build]:
    """The current tiles on every layout asked for; the alternatives on the padded one."""
    builds = []
    for arch in args.arch:
        for head_dim in args.head_dim:
            tile_sets = [current_tiles(head_dim)] if args.current_only else candidate_tiles(head_dim)
            for tiles in tile_sets:
                layouts = args.layout if tiles == current_tiles(head_dim) else [l for l in args.layout if l == "padded"]
                builds += [Build(arch, head_dim, layout, kernel, tiles) for layout in layouts for kernel in args.kernel]
    return builds


def least_spilling(rows: list[dict]) -> dict:
    """Per architecture and head size: the tiles whose padded kernels spill the fewest bytes
    in all (stores and loads), among those that fit shared memory; the current tiles on a tie."""
    totals: dict[tuple, dict] = {}
    for row in rows:
        if row["layout"] != "padded":
            continue
        key = (row["arch"], row["head_dim"], tuple(row["tiles"].values()))
        total = totals.setdefault(key, dict(tiles=row["tiles"], current=row["current"], spill_bytes=0, fits=True))
        total["spill_bytes"] += row["spill_store_bytes"] + row["spill_load_bytes"]
        total["fits"] &= row["shared_fits"]
    best: dict[str, dict] = {}
    for (arch, head_dim, _), total in totals.items():
        name = f"sm_{arch} head {head_dim}"
        if total["fits"] and (name not in best or (total["spill_bytes"], not total["current"])
                              < (best[name]["spill_bytes"], not best[name]["current"])):
            best[name] = total
    return best


def table_row(row: dict) -> list:
    tiles = str(Tiles(**row["tiles"])) + (" (current)" if row["current"] else "")
    return [f"sm_{row['arch']}", row["head_dim"], tiles, row["layout"], row["kernel"], row["registers"],
            f"{row['spill_store_bytes']} / {row['spill_load_bytes']}", row["stack_bytes"],
            f"{row['shared_bytes'] / 1024:.0f}" + ("" if row["shared_fits"] else " (too much)")]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_MEMORY_LIMIT),
                        help="compute capabilities to build for (90: H100/H200, 80: A100)")
    parser.add_argument("--head_dim", type=int, nargs="+", default=[64, 128], choices=[16, 32, 64, 128])
    parser.add_argument("--layout", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--kernel", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--current_only", action="store_true", help="only the tiles _blocks picks, no alternatives")
    parser.add_argument("--jobs", type=int, default=1, help="builds compiled at the same time (one process each)")
    add_json_argument(parser, "kernel_resources")
    args = parser.parse_args(argv)
    if ptxas_path() is None:
        raise SystemExit("Triton's bundled ptxas was not found: install Triton with its NVIDIA backend "
                         "(pip install '.[triton]')")
    builds = plan(args)
    print(f"{len(builds)} builds", flush=True)
    rows = []
    # A fresh cache: every build is compiled, none read back from an earlier run.
    with tempfile.TemporaryDirectory(prefix="kernel-resources-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for row in pool.map(measure, builds):
                rows.append(row)
                print(" | ".join(map(str, table_row(row))) + f" | {row['compile_seconds']} s", flush=True)
    best = least_spilling(rows)
    notes = [f"Least spilling that fits shared memory (padded layout; spill stores + loads of the kernels built, summed): "
             + "; ".join(f"{name}: {Tiles(**total['tiles'])}{' (current)' if total['current'] else ''}, "
                         f"{total['spill_bytes']} bytes" for name, total in best.items()) + "."]
    notes.append("Registers are per thread (255 is the most a thread can have); spill bytes are what ptxas moves "
                 "between registers and local memory (stores / loads), stack the local memory per thread; shared "
                 "memory in KB, against 227 KB a block may use on sm_90 and 163 KB on sm_80. The current tiles "
                 "are built on both layouts, the alternatives on the padded one.")
    for note in notes:
        print(note)
    results = {"builds": rows, "least_spilling": best}
    write_result(args.json, benchmark="kernel_resources",
                 title="Disentangled-attention kernels compiled for "
                       + " and ".join(f"sm_{arch}" for arch in args.arch) + " (bf16, both relative terms, dropout)",
                 command=command_line("bench.kernel_resources", argv), results=results,
                 columns=["arch", "head", "tiles", "layout", "kernel", "registers", "spill bytes (st / ld)",
                          "stack bytes", "shared KB"],
                 rows=[table_row(row) for row in rows], notes=notes)
    return results


if __name__ == "__main__":
    main()
