"""The training step waits on the device only where the ranks must agree.

On a GPU the host waits whenever it needs a value the device computes: ``.item()``,
``float(t)``, ``bool(t)``, ``.tolist()``, a boolean selection (``x[mask]``: its size is
counted first), ``nonzero``, ``unique``... CUDA's sync debug mode has no CPU counterpart,
so this test watches the operators themselves: a ``TorchDispatchMode`` sees every ATen
operator a few pretraining and finetuning steps run on CPU and records those that read
device values on the host, with the Python code that asked for them. Ours (this
repository's code, not PyTorch's or DeepSpeed's own) must be none: the metrics, the
non-finite flag and the stop request reach the host in the agreement's one copy
(``.tolist()``, after its one all-reduce), and those are counted too.
"""
from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from deberta import DebertaConfig, build_model, load_tokenizer, save_model
from training import sync

REPO = Path(__file__).resolve().parents[2]
SPM_MODEL = REPO / "tests" / "assets" / "spm.model"
aten = torch.ops.aten
# Operators whose result the host must wait for (item/float/int/bool all become _local_scalar_dense).
WAITING_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten.is_nonzero.default, aten.equal.default, aten._unique2.default, aten.unique_dim.default,
               aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
INDEXING_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
TORCH = str(Path(torch.__file__).parent)
LIBRARIES = (TORCH, str(Path(__import__("deepspeed").__file__).parent))
HELPERS = ("__torch_dispatch__", "counted_tolist", "counted_all_reduce", "caller")
# Functions that read host tensors by design: the data loader's output before it goes to the device.
HOST_DATA = ("_note_bad_sequences", "_micro_batches")


def caller() -> tuple[str, tuple[str, ...]]:
    """('path:line function' of the innermost frame outside PyTorch, the functions of the whole stack)."""
    stack = [frame for frame in traceback.extract_stack() if frame.name not in HELPERS]
    functions = tuple(frame.name for frame in stack)
    for frame in reversed(stack):
        if not frame.filename.startswith(TORCH):
            return f"{frame.filename}:{frame.lineno} {frame.name}", functions
    return "?", functions


def is_ours(where: str) -> bool:
    """Code of this project (or a test's), not PyTorch's or DeepSpeed's."""
    return not where.startswith(LIBRARIES)


class HostWaits(TorchDispatchMode):
    """Records every operator that makes the host wait for the device, and every agreement
    (all-reduce and host copy of training.sync)."""

    def __init__(self):
        super().__init__()
        self.waits: list[tuple[str, str, tuple[str, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func in INDEXING_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ()))
        if func in WAITING_OPS or boolean_index:
            self.waits.append((str(func), *caller()))
        return func(*args, **kwargs)

    def ours(self, outside_the_step: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(operator, where) of the waits our code asked for, less those under a function
        named in ``outside_the_step``."""
        return [(op, where) for op, where, functions in self.waits
                if is_ours(where) and not set(functions) & set(outside_the_step + HOST_DATA)]


@pytest.fixture
def agreements(monkeypatch) -> list[str]:
    """Counts the agreement's all-reduces and host copies (``.tolist()`` on CPU is no operator)."""
    events: list[str] = []
    all_reduce, tolist = dist.all_reduce, torch.Tensor.tolist

    def counted_all_reduce(tensor, *args, **kwargs):
        if "training/sync.py" in caller()[0]:  # not DeepSpeed's gradient reductions
            events.append("all_reduce")
        return all_reduce(tensor, *args, **kwargs)

    def counted_tolist(tensor):
        where, functions = caller()
        if is_ours(where) and not set(functions) & set(HOST_DATA):
            events.append(f"tolist {where}")
        return tolist(tensor)

    monkeypatch.setattr(sync.dist, "all_reduce", counted_all_reduce)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    return events


def write_text_corpus(path: Path) -> Path:
    words = ("the river runs past the old mill and the town was founded long ago by people who came "
             "from far away to build houses near the water where the fish were plenty").split()
    g = torch.Generator().manual_seed(0)
    documents = [" ".join(words[i] for i in torch.randint(0, len(words), (int(n),), generator=g).tolist())
                 for n in torch.randint(20, 120, (300,), generator=g)]
    path.write_text("\n\n".join(documents) + "\n")
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_prep.sharding import ShardConfig, run_shard

    folder = tmp_path_factory.mktemp("sync_data")
    corpus = write_text_corpus(folder / "corpus.txt")
    assert run_shard(ShardConfig(inputs=[str(corpus)], tokenizer=str(SPM_MODEL), output=str(folder / "data"),
                                 seq_len=64, valid_fraction=0.1, progress_interval=1000.0)) == 0
    return folder / "data"


PRETRAIN_MODEL = ("hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,vocab_size=1001,"
                  "max_position_embeddings=64,position_buckets=16")


def pretrain_steps(shards: Path, output: Path, objective: str, steps: int, inject=None, agreements=None, **flags):
    """Trainer.train_step of a world of one, its batches read beforehand: (HostWaits of the
    steps after the first, number of engines); ``agreements`` is emptied before those steps."""
    from pretrain.config import parse_args
    from pretrain.data import TrainOrder, train_loader
    from pretrain.trainer import Trainer
    from training.distributed import shutdown
    from training.outputs import Throughput

    values = {"model_config": "deberta-v3-base", "set_model": PRETRAIN_MODEL, "objective": objective,
              "data_dir": shards, "output_dir": output, "max_steps": 10, "micro_batch_size": 4, "grad_accum": 2,
              "num_workers": 0, "tensorboard": "false", **flags}
    argv = [item for name, value in values.items() for item in (f"--{name}", str(value))]
    try:
        trainer = Trainer(parse_args(argv))
        order = TrainOrder(len(trainer.train_set), trainer.config.run.seed, trainer.micro, trainer.accumulation, 0, 1)
        loader = iter(train_loader(trainer.train_set, order, 0, trainer.config.data, pin_memory=False))
        batches = iter([next(loader) for _ in range((steps + 1) * trainer.accumulation)])
        throughput = Throughput(trainer.flops_per_token)
        trainer.train_step(batches, throughput)  # the first step builds what later steps reuse
        if inject:
            inject(trainer)
        if agreements is not None:
            agreements.clear()
        with HostWaits() as waits:
            for _ in range(steps):
                trainer.train_step(batches, throughput)
        return waits, len(trainer.engines)
    finally:
        shutdown()


@pytest.mark.parametrize("objective", ["mlm", pytest.param("rtd", marks=pytest.mark.slow)])
def test_pretraining_steps_wait_only_for_the_agreement(shards, tmp_path, monkeypatch, agreements, objective):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    waits, engines = pretrain_steps(shards, tmp_path / "run", objective, steps=2, agreements=agreements)
    assert waits.ours() == [], "host waits in the step:\n" + "\n".join(f"{op} at {w}" for op, w in waits.ours())
    # One agreement per update (decoupled RTD updates two engines): one all-reduce, one copy each.
    copies = [e for e in agreements if e.startswith("tolist")]
    assert agreements.count("all_reduce") == len(copies) == 2 * engines, agreements
    assert all("training/sync.py" in copy for copy in copies), copies
    foreign = sorted({where for _, where, _ in waits.waits})
    print(f"{objective}: {len(waits.waits)} waits inside PyTorch/DeepSpeed code per 2 steps: {foreign}")


def test_an_item_in_the_step_is_caught(shards, tmp_path, monkeypatch, agreements):
    """The check fails when someone reads a device value in the step."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")

    def read_the_loss_each_micro_batch(trainer):
        forward = trainer.objective.forward

        def forward_and_print(*args, **kwargs):
            loss, metrics = forward(*args, **kwargs)
            print(f"loss {loss.item():.3f}")
            return loss, metrics
        monkeypatch.setattr(trainer.objective, "forward", forward_and_print, raising=False)

    waits, _ = pretrain_steps(shards, tmp_path / "run", "mlm", steps=1, inject=read_the_loss_each_micro_batch)
    ours = waits.ours()
    assert [op for op, _ in ours] == ["aten._local_scalar_dense.default"] * 2, ours  # one per micro-batch
    assert all("forward_and_print" in where for _, where in ours)


@pytest.mark.slow
def test_exact_target_count_is_a_host_wait_and_the_fixed_count_is_not(shards, tmp_path, monkeypatch, agreements):
    """--max_preds_per_seq -1 (outputs at exactly the targets) makes the host count them."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    waits, _ = pretrain_steps(shards, tmp_path / "run", "mlm", steps=1, max_preds_per_seq=-1)
    assert any("deberta/model.py" in where for _, where in waits.ours()), waits.ours()


NER_SENTENCES = "John NNP B-PER\nSmith NNP I-PER\nvisited VBD O\nParis NNP B-LOC\n. . O\n\n" \
                "The DT O\nUnited NNP B-ORG\nNations NNP I-ORG\nmet VBD O\nin IN O\nGeneva NNP B-LOC\n\n"


@pytest.mark.slow
@pytest.mark.parametrize("task, sift", [("sst-2", False), ("ner", True)])
def test_finetuning_steps_wait_only_for_the_agreement(tmp_path, monkeypatch, agreements, task, sift):
    """A few steps of SST-2, and of NER with SiFT (whose divergence counts the real tokens of a
    padded batch): only the agreement and the evaluation (outside the step) read values."""
    from finetune.config import FinetuneConfig
    from finetune.trainer import Trainer
    from training.distributed import shutdown

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    model = tmp_path / "model"
    torch.manual_seed(0)
    save_model(build_model(DebertaConfig(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=128, position_buckets=16,
                                         max_relative_positions=64), "masked_lm"), model, load_tokenizer(SPM_MODEL))
    sentences = ["a wonderful , moving film", "i was bored the whole time", "the best movie of the year",
                 "an ugly , lazy sequel of a film that nobody wanted"]
    rows = [f"{s}\t{i % 2}\n" for i, s in enumerate(sentences * 6)]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(rows[:8]))
    (tmp_path / "train.txt").write_text(NER_SENTENCES * 8)
    (tmp_path / "dev.txt").write_text(NER_SENTENCES * 2)
    config = FinetuneConfig.create(task=task, model=str(model), data_dir=str(tmp_path), sift=sift,
                                   output_dir=str(tmp_path / "out"), max_steps=4, batch_size=4, grad_accum=2,
                                   log_interval=100, tensorboard=False, save_best=False)
    try:
        trainer = Trainer(config)
        with HostWaits() as waits:
            trainer.train()
    finally:
        shutdown()
    # Evaluation and the progress line (every --log_interval steps) are not the step.
    in_step = waits.ours(outside_the_step=("predict", "_evaluate_and_keep_best", "_log_training"))
    assert in_step == [], "host waits in the step:\n" + "\n".join(f"{op} at {w}" for op, w in in_step)
    assert agreements.count("all_reduce") >= 4
