"""bench/kernel_resources.py: the tiles it calls current are _blocks' on a large GPU, its
choice of the least spilling tiles, and (slow) one real build for sm_90 read back from JSON."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from bench import kernel_resources
from bench.common import REPO


def test_current_tiles_are_what_blocks_picks_on_a_large_gpu(monkeypatch):
    kernels = pytest.importorskip("deberta.kernels.disentangled_attention")
    monkeypatch.setattr(kernels, "INTERPRETED", False)  # _blocks as on a GPU; device None: >= 128 KB shared
    for head_dim in (16, 32, 64, 128):
        assert tuple(vars(kernel_resources.current_tiles(head_dim)).values()) == kernels._blocks(head_dim)
        assert kernel_resources.candidate_tiles(head_dim)[0] == kernel_resources.current_tiles(head_dim)


def build_row(tiles, current, spills, shared_fits=True, layout="padded", arch=90):
    return dict(arch=arch, head_dim=64, layout=layout, tiles=vars(tiles), current=current, spill_store_bytes=spills,
                spill_load_bytes=spills, shared_fits=shared_fits)


def test_least_spilling_sums_the_kernels_and_skips_what_does_not_fit():
    current, small, staged = kernel_resources.Tiles(64, 128, 4, 2), kernel_resources.Tiles(32, 64, 4, 2), \
        kernel_resources.Tiles(64, 128, 4, 1)
    rows = [build_row(current, True, 100), build_row(current, True, 100),       # 400 bytes in all
            build_row(small, False, 10), build_row(small, False, 250),          # 520
            build_row(staged, False, 0, shared_fits=False), build_row(staged, False, 0),  # too much shared memory
            build_row(small, False, 0, layout="varlen"),                         # not compared
            build_row(small, False, 5, arch=80)]
    best = kernel_resources.least_spilling(rows)
    assert best["sm_90 head 64"] == dict(tiles=vars(current), current=True, spill_bytes=400, fits=True)
    assert best["sm_80 head 64"]["spill_bytes"] == 10 and not best["sm_80 head 64"]["current"]


@pytest.mark.slow
def test_forward_kernel_builds_for_hopper_within_its_limits(tmp_path):
    """The tool builds the sm_90 forward kernel (head 64, padded, _blocks' tiles) with Triton's
    compiler and ptxas on this CPU; the JSON holds ptxas' figures within the H100's limits."""
    if importlib.util.find_spec("triton") is None or kernel_resources.ptxas_path() is None:
        pytest.skip("Triton with its bundled ptxas is not installed")
    output = tmp_path / "resources.json"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-m", "bench.kernel_resources", "--arch", "90", "--head_dim", "64",
                    "--layout", "padded", "--kernel", "forward", "--current_only", "--json", str(output)],
                   cwd=REPO, env=env, check=True, timeout=600)
    record = json.loads(output.read_text())
    [row] = record["results"]["builds"]
    assert (row["arch"], row["head_dim"], row["layout"], row["kernel"], row["current"]) == (90, 64, "padded",
                                                                                            "forward", True)
    assert 0 < row["registers"] <= 255
    assert 0 < row["shared_bytes"] <= 227 * 1024 and row["shared_fits"]
    assert min(row["stack_bytes"], row["spill_store_bytes"], row["spill_load_bytes"]) >= 0
    assert record["table"]["rows"][0][:5] == ["sm_90", 64, "64x64 w128 4 warps 2 st (current)", "padded", "forward"]
    assert list(record["results"]["least_spilling"]) == ["sm_90 head 64"]
