"""Our model and attention against every peer on one GPU, in one run, headline shape first.

    python -m bench.gpu_attention                    # every group below, about 6 minutes
    python -m bench.gpu_attention --groups v3-base-mlm --budget 200
    python -m bench.gpu_attention --dry-run          # CPU smoke test of this script: tiny shapes

Part 1, the model: one training step (forward + backward, 15 % targets, no optimizer) per
system, each in its own subprocess so that its peak memory is its own. Row groups, in order:

  v3-base-mlm    DeBERTa-v3-base MLM, batch 32 x 512, bf16 (the headline): transformers'
                 DebertaV2ForMaskedLM eager, with torch.compile, and with disentangled-flash
                 (when the package is importable); ours with each attention backend, and
                 compiled (every encoder layer, as --compile does: training/compile.py).
  v3-base-finetune  finetuning: DeBERTa-v3-base sequence classification, forward + backward +
                 AdamW, bf16 autocast, batches of 32 drawn from the token lengths of GLUE
                 training files (bench/glue_lengths.json: SST-2 sentences, and RTE pairs in
                 place of MNLI, which the data lacks), cut at --finetune_max_length, the same
                 batches for every system. transformers' DebertaV2ForSequenceClassification
                 eager, each batch padded to its longest as a dynamic-padding collator does;
                 ours padded (ours-sdpa), packed with no padding (-unpadded: cu_seqlens, as
                 finetuning's --unpadded) on sdpa and on the fused Triton kernels, and packed
                 compiled as --compile does (its graph is built for the first batch's shape,
                 then once more with dynamic shapes). The measured batches run once untimed
                 first, so that every graph and kernel variant they need (Triton specialises
                 on lengths divisible by 16) is built before the timed pass. Tokens/s
                 counts real tokens, so packing shows as speed; no FLOP count (padded and
                 packed systems do different work on the same batches). One process per system
                 measures both distributions, SST-2 first.
  v3-base-rtd    replaced-token detection, decoupled as v3 trains it: the generator (half the
                 depth) forward + backward, replacements sampled at the targets, then the
                 discriminator forward + backward on them. transformers has no RTD model; its
                 equivalent here is DebertaV2ForMaskedLM as generator and
                 DebertaV2ForTokenClassification with one label (binary cross-entropy) as
                 discriminator, as ELECTRA builds it. Word embeddings are not shared on either
                 side (sharing moves no FLOPs).
  v3-large-mlm   DeBERTa-v3-large MLM, batch 32 x 512.
  xxlarge-mlm    the 1.5B model (deberta-v2-xxlarge preset), batch 8 x 512, activation
                 checkpointing on every system, plain bf16 autocast on one GPU (fp32 weights
                 and gradients: 12 GB). ZeRO-3 is not measured here: it shards across GPUs, and
                 on one GPU it would only add its gather hooks.

Every pretraining row reports tokens/s, peak allocated memory and model TFLOP/s. The FLOP count is
the same for ours and for the peers at one shape, so that the TFLOP/s ratios equal the speed
ratios: the work of the model as transformers computes it, i.e. the 128K-way output at every
position, no enhanced mask decoder (pretrain/metrics.py forward_flops_per_token with
target_fraction 1 and emd_layers 0, times 3 for forward + backward). Ours computes that output
only at the 15 % targets, so it does less work than it is credited with: "model TFLOP/s" is a
speed in the peers' unit, not our hardware utilisation. For v3-base at 512 the count is, per token,

    12 layers x [2 (4 h^2 + 2 h i)  +  2 x 512 x h x 4  +  2 x 2 x 2S x h^2 / 512]
      = 12 x [14,155,776  +  3,145,728  +  2,359,296]                       = 235.9 M
    + output 2 (h e + e V) = 2 (768 x 768 + 768 x 128,100)                  = 197.9 M
    forward 433.8 M;  training step 3 x 433.8 M = 1.30 GFLOP per token

(h 768, i 3072, e 768, V 128,100, S 256 buckets; the attention products are the content
scores, c2p, p2c and the weighted sum of values). RTD counts the generator with its output at
every position plus the discriminator with its one-logit head.

Part 2, the attention alone (forward + backward, 12 heads of 64, v3 buckets, 16384 tokens at
512 and at 2048): our backends, and flex_attention with the c2p/p2c terms as a score modifier
reading precomputed [B, H, L, 2S] products (a candidate second backend). disentangled-flash is
compared at the model level only: its public training interface (0.1-0.2, read from its sources,
the package not at hand here) patches a transformers encoder (``optimize_deberta_training``) or
replaces its attention module, projections included (``TritonTrainingDisentangledSelfAttention``);
the kernel function underneath is private (``disentangled_flash.training._kernels``) and its
arguments change between versions, so timing it on bare tensors would measure a guess.

Time: each group has a share of --budget (seconds; the shares are cumulative deadlines, so time a
group leaves over goes to the next), and each system at most --timeout. A system that cannot run,
fails or runs out of time is recorded with the reason and the run goes on. The JSON is rewritten
after every measurement, so a run cut short still reports what it measured.

Nothing is installed here (bench/gpu_check.sh brings the wheels).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from bench.common import REPO, add_json_argument, command_line, write_result

KERNEL_SYSTEMS = ("eager", "sdpa", "triton", "flex")
PEER_SYSTEMS = ("hf-eager", "hf-compile", "hf-disentangled-flash")


@dataclass(frozen=True)
class Group:
    """One row group: a model, a workload, a shape, its systems and its share of the budget."""
    name: str
    preset: str
    objective: str  # mlm, rtd (pretraining at --seq) or classification (finetuning on GLUE lengths)
    batch: int
    systems: tuple[str, ...]
    budget_s: float
    checkpointing: bool = False
    distributions: tuple[str, ...] = ()  # classification: length distributions of bench/glue_lengths.json

    @property
    def finetuning(self) -> bool:
        return self.objective == "classification"


# Headline first; in each group the rows that matter most first (the last ones are cut
# when the group's time runs out). transformers compiled costs a minute or more of
# compilation per model, so outside the headline it is left out (the headline says how
# much compiling gives it).
GROUPS = (
    Group("v3-base-mlm", "deberta-v3-base", "mlm", 32,
          ("hf-eager", "hf-compile", "hf-disentangled-flash", "ours-triton", "ours-sdpa", "ours-triton-compiled",
           "ours-eager", "ours-sdpa-compiled"), budget_s=180),
    Group("v3-base-finetune", "deberta-v3-base", "classification", 32,
          ("hf-eager", "ours-triton-unpadded", "ours-sdpa", "ours-sdpa-unpadded", "ours-triton-unpadded-compiled"),
          budget_s=75, distributions=("SST-2", "RTE")),
    Group("v3-base-rtd", "deberta-v3-base", "rtd", 32, ("hf-eager", "ours-sdpa", "ours-triton",
                                                       "ours-triton-compiled"), budget_s=28),
    Group("v3-large-mlm", "deberta-v3-large", "mlm", 32,
          ("hf-eager", "hf-disentangled-flash", "ours-sdpa", "ours-triton", "ours-triton-compiled"), budget_s=28),
    Group("xxlarge-mlm", "deberta-v2-xxlarge", "mlm", 8, ("hf-eager", "ours-sdpa", "ours-triton"),
          budget_s=28, checkpointing=True),
)
KERNEL_BUDGET_S = 18
GROUP_NAMES = tuple(group.name for group in GROUPS)
# --dry-run's systems when --systems is not given, every code path in a few minutes: in the
# pretraining groups a peer, the peer compiled and ours compiled (RTD on both sides,
# checkpointing, both ways of compiling); in the finetuning group the peer and ours padded,
# ours packed through the Triton kernels (the interpreter on CPU) and packed compiled (on
# sdpa: dynamo cannot trace the Triton interpreter).
DRY_RUN_SYSTEMS = {False: ("hf-eager", "hf-compile", "ours-sdpa-compiled"),
                   True: ("hf-eager", "ours-sdpa", "ours-triton-unpadded", "ours-sdpa-unpadded-compiled")}


def parse_system(system: str) -> tuple[str, bool, bool]:
    """(attention backend, packed, compiled) of one of ours: ``ours-<backend>[-unpadded][-compiled]``."""
    name = system.removeprefix("ours-")
    compiled, name = name.endswith("-compiled"), name.removesuffix("-compiled")
    unpadded, name = name.endswith("-unpadded"), name.removesuffix("-unpadded")
    return name, unpadded, compiled


def group_systems(group: Group, args) -> tuple[str, ...]:
    """The systems measured in ``group``: --systems (packed ones in the finetuning group only:
    pretraining sequences are full-length, nothing to unpad), the dry run's, or its own."""
    if args.systems:
        return tuple(s for s in args.systems.split(",") if s and (group.finetuning or not parse_system(s)[1]))
    if args.dry_run:
        return DRY_RUN_SYSTEMS[group.finetuning]
    return group.systems


# ---------------------------------------------------------------------------------------
# Part 1: the model step
# ---------------------------------------------------------------------------------------
def model_config(group: Group, args, **changes):
    from deberta import DebertaConfig

    # emd_layers=0 on both sides: transformers has no enhanced mask decoder.
    return DebertaConfig.from_preset(group.preset, emd_layers=0, **{**args.model_overrides, **changes})


def generator_changes(config) -> dict:
    return {"num_hidden_layers": max(1, config.num_hidden_layers // 2)}  # v3's generator: half the depth


def step_flops_per_token(group: Group, args) -> float:
    """Forward + backward FLOPs per token of the model as the peers compute it (docstring)."""
    from pretrain.metrics import forward_flops_per_token

    config = model_config(group, args)
    if group.objective == "mlm":
        return 3 * forward_flops_per_token(config, args.seq, 1.0, mlm_head=True)
    generator = model_config(group, args, **generator_changes(config))
    return 3 * (forward_flops_per_token(generator, args.seq, 1.0, mlm_head=True)
                + forward_flops_per_token(config, args.seq, 1.0, mlm_head=False))


def build_models(system: str, group: Group, args, device) -> list:
    """[model] for MLM and classification, [generator, discriminator] for RTD, on ``device``,
    checkpointing and compilation applied."""
    config = model_config(group, args)
    if group.objective == "rtd":
        configs = [model_config(group, args, **generator_changes(config)), config]
        heads = ["masked_lm", "replaced_token_detection"]
    else:
        configs, heads = [config], ["sequence_classification" if group.finetuning else "masked_lm"]
    models = []
    for config, head in zip(configs, heads):
        if system.startswith("ours-"):
            from deberta import build_model

            model = build_model(config.replace(attention_backend=parse_system(system)[0]), head)
        else:
            import transformers
            from deberta.checkpoint import hf_config

            if head == "replaced_token_detection":  # ELECTRA's discriminator: one logit per token
                model = transformers.DebertaV2ForTokenClassification(
                    transformers.DebertaV2Config(**{**hf_config(config, "masked_lm"), "num_labels": 1}))
            else:
                kind = getattr(transformers, {"masked_lm": "DebertaV2ForMaskedLM",
                                              "sequence_classification": "DebertaV2ForSequenceClassification"}[head])
                model = kind(transformers.DebertaV2Config(**hf_config(config, head)))
        model = model.to(device).train()
        if group.checkpointing:
            model.gradient_checkpointing_enable()
        if system == "hf-disentangled-flash":
            from disentangled_flash import optimize_deberta_training  # raises where it is not installed

            optimize_deberta_training(model.deberta, backend="triton")
        if system == "hf-compile":
            model = torch.compile(model, backend=args.compile_backend)
        if system.endswith("-compiled"):
            from training.compile import compile_encoder_layers  # what --compile does in training

            compile_encoder_layers(model, backend=args.compile_backend)
        models.append(model)
    return models


def model_worker(system: str, group: Group, args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    models = build_models(system, group, args, device)
    generator = torch.Generator().manual_seed(0)
    vocab = models[0].config.vocab_size
    ids = torch.randint(5, vocab, (group_batch(group, args), args.seq), generator=generator)
    targets = torch.rand(ids.shape, generator=generator) < 0.15
    labels = torch.where(targets, ids, torch.full_like(ids, -100)).to(device)
    ids, targets = ids.to(device), targets.to(device)
    ours = system.startswith("ours-")

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def mlm_step(model):
        with autocast():
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        return out.logits

    def rtd_step():
        """Decoupled, as v3 trains: the generator's step, then the discriminator's on its samples."""
        generator_model, discriminator = models
        logits = mlm_step(generator_model)
        with torch.no_grad():  # ours has logits at the targets only, transformers everywhere
            at_targets = logits if ours else logits[targets]
            sampled = torch.multinomial(torch.softmax(at_targets.float(), dim=-1), 1).squeeze(-1)
            replaced = ids.masked_scatter(targets, sampled)
            replaced_labels = (replaced != ids).long()
        with autocast():
            if ours:
                loss = discriminator(replaced, labels=replaced_labels).loss
            else:
                scores = discriminator(input_ids=replaced).logits.squeeze(-1).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, replaced_labels.float())
        (50.0 * loss).backward()  # rtd_lambda, as pretraining weighs it

    def step():
        if group.objective == "mlm":
            mlm_step(models[0])
        else:
            rtd_step()
        for model in models:
            model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    tokens_per_s = ids.numel() / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds_per_step": seconds, "tokens_per_s": tokens_per_s, "peak_gib": peak,
            "model_tflops": tokens_per_s * step_flops_per_token(group, args) / 1e12}


def group_batch(group: Group, args) -> int:
    return args.batch or group.batch


# ---------------------------------------------------------------------------------------
# Part 1, finetuning: sequence classification on GLUE length distributions
# ---------------------------------------------------------------------------------------
def finetune_batches(group: Group, args, distribution: str) -> list[list[int]]:
    """The sequence lengths of every measured batch: drawn from the distribution's histogram
    (bench/glue_lengths.json), cut at --finetune_max_length. Seeded, so every system (each in
    its own process) trains on the same batches."""
    from bench import glue_lengths

    counts = glue_lengths.load()[distribution]
    lengths, weights = zip(*sorted(counts.items()))
    rng = random.Random(0)
    return [[min(n, args.finetune_max_length) for n in rng.choices(lengths, weights, k=group_batch(group, args))]
            for _ in range(args.finetune_steps)]


def classification_inputs(lengths: list[int], packed: bool, vocab: int, generator, device) -> dict:
    """One batch of random tokens with these lengths and binary labels: packed end to end
    (``cu_seqlens``, as --unpadded) or padded to the batch's longest with an attention mask
    (as a dynamic-padding collator, ``finetune.data.pad_batch`` or transformers', pads)."""
    sequences = [torch.randint(5, vocab, (n,), generator=generator) for n in lengths]
    inputs = {"labels": torch.randint(0, 2, (len(lengths),), generator=generator)}
    if packed:
        inputs.update(input_ids=torch.cat(sequences), max_seqlen=max(lengths),
                      cu_seqlens=torch.tensor([0, *lengths]).cumsum(0).to(torch.int32))
    else:
        ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)  # 0: v3's [PAD]
        for row, sequence in enumerate(sequences):
            ids[row, :len(sequence)] = sequence
        real = torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]
        inputs.update(input_ids=ids, attention_mask=real.long())
    return {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}


def finetune_worker(system: str, group: Group, args) -> dict:
    """{distribution: figures}: forward, backward and AdamW steps of one classifier on the
    same batches as every other system; tokens/s counts real tokens, not padding."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    (model,) = build_models(system, group, args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    packed = system.startswith("ours-") and parse_system(system)[1]

    def step(inputs):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = {}
    for distribution in group.distributions:  # one process for all: compiled graphs carry over
        generator = torch.Generator().manual_seed(0)
        lengths = finetune_batches(group, args, distribution)
        batches = [classification_inputs(batch, packed, model.config.vocab_size, generator, device)
                   for batch in lengths]
        # Untimed, the same batches: compiled rows build their graphs (the first batch's shape,
        # then dynamic shapes), Triton its kernels for every specialisation these lengths meet.
        for inputs in batches:
            step(inputs)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for inputs in batches:
            step(inputs)
        synchronize(device)
        seconds = time.perf_counter() - start
        results[distribution] = {
            "seconds_per_step": seconds / args.finetune_steps,
            "tokens_per_s": sum(map(sum, lengths)) / seconds,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    return results


def describe_batches(group: Group, args) -> dict:
    """What every system of the finetuning group trains on, per distribution: the lengths of
    the measured batches and the share of a padded batch that is padding."""
    described = {}
    for distribution in group.distributions:
        measured = finetune_batches(group, args, distribution)
        real = sum(map(sum, measured))
        padded = sum(len(batch) * max(batch) for batch in measured)
        described[distribution] = {"mean_length": real / sum(map(len, measured)),
                                   "longest": max(map(max, measured)), "padding_fraction": 1 - real / padded}
    return described


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------
# Part 2: the attention alone
# ---------------------------------------------------------------------------------------
def attention_inputs(batch, length, device, dtype, heads=12, head_dim=64, buckets=256):
    from deberta import DebertaConfig
    from deberta.model import relative_position_index

    config = DebertaConfig(position_buckets=buckets, max_relative_positions=512)
    span = config.relative_span

    def leaf(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    tensors = [leaf(batch, heads, length, head_dim) for _ in range(3)]
    tensors += [leaf(heads, 2 * span, head_dim) for _ in range(2)]
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    mask[1:, length * 3 // 4:] = 0  # padding in every row but the first
    index = relative_position_index(length, config, device)
    return tensors, index, mask, 1 / math.sqrt(head_dim * 3)


def flex_disentangled(query, key, value, pos_key, pos_query, index, mask, scale):
    """flex_attention with c2p and p2c as a score modifier: the [B, H, L, 2S] products are
    precomputed (as in relative_terms) and gathered per score; padded keys masked."""
    from torch.nn.attention.flex_attention import flex_attention

    c2p = torch.matmul(query * scale, pos_key.transpose(-1, -2))  # [B, H, L, 2S]
    p2c = torch.matmul(key, (pos_query * scale).transpose(-1, -2))  # [B, H, L, 2S]
    key_real = mask.bool()

    def score_mod(score, b, h, q_idx, kv_idx):
        relative = index[q_idx, kv_idx]
        score = score + c2p[b, h, q_idx, relative] + p2c[b, h, kv_idx, relative]
        return torch.where(key_real[b, kv_idx], score, -float("inf"))

    return flex_attention(query, key, value, score_mod=score_mod, scale=scale)


def kernel_worker(system: str, args) -> dict:
    from deberta.attention import get_backend

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tokens = args.kernel_tokens
    results = {}
    for length in args.kernel_lengths:
        batch = max(1, tokens // length)
        tensors, index, mask, scale = attention_inputs(batch, length, device, dtype,
                                                       heads=args.kernel_heads, head_dim=args.kernel_head_dim)
        if system == "flex":
            attend = torch.compile(flex_disentangled)
            run = lambda: attend(*tensors, index, mask, scale)  # noqa: E731
        else:
            backend = get_backend(system)
            run = lambda: backend(*tensors, index, mask, scale, query_mask=mask)  # noqa: E731
        grad = torch.randn(batch, args.kernel_heads, length, args.kernel_head_dim, device=device, dtype=dtype)

        def step():
            torch.autograd.backward(run(), grad)
            for t in tensors:
                t.grad = None

        for _ in range(args.warmup):
            step()
        synchronize(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        milliseconds = (time.perf_counter() - start) / args.steps * 1e3
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
        results[str(length)] = {"batch": batch, "ms_forward_backward": milliseconds, "extra_peak_gib": peak}
    return results


# ---------------------------------------------------------------------------------------
# The parent: one subprocess per system, results written as they come
# ---------------------------------------------------------------------------------------
def run_worker(worker: str, argv: list[str], timeout: float) -> dict:
    command = [sys.executable, "-m", "bench.gpu_attention", *argv, "--worker", worker]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def summarise_models(models: dict) -> dict:
    peers = {k: v for k, v in models.items() if k.startswith("hf-") and "tokens_per_s" in v}
    if not peers:
        return {}
    best = max(peers, key=lambda k: peers[k]["tokens_per_s"])
    summary = {"best_peer": best}
    for name, figures in models.items():
        if name.startswith("ours-") and "tokens_per_s" in figures:
            summary[name] = {"speed_vs_best_peer": figures["tokens_per_s"] / peers[best]["tokens_per_s"]}
            eager = models.get("hf-eager", {})
            if figures.get("peak_gib") and eager.get("peak_gib"):
                summary[name]["memory_vs_hf_eager"] = figures["peak_gib"] / eager["peak_gib"]
    return summary


def time_left(deadline: float, timeout: float, started: float) -> float:
    return min(timeout, deadline - (time.perf_counter() - started))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default=",".join(GROUP_NAMES), help=f"comma-separated, of {GROUP_NAMES}; '' for none")
    parser.add_argument("--systems", default="",
                        help="comma-separated: these systems in every group instead of each group's own "
                             "(ours-<backend>-unpadded[-compiled] in the finetuning group only)")
    parser.add_argument("--batch", type=int, default=0, help="every group's batch (0: each group's own)")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend of the compiled rows")
    parser.add_argument("--kernels", default=",".join(KERNEL_SYSTEMS), help="comma-separated; '' for none")
    parser.add_argument("--kernel_lengths", default="512,2048")
    parser.add_argument("--kernel_tokens", type=int, default=16384)
    parser.add_argument("--kernel_heads", type=int, default=12)
    parser.add_argument("--kernel_head_dim", type=int, default=64)
    parser.add_argument("--finetune_max_length", type=int, default=256,
                        help="finetuning group: longer sequences are cut to this many tokens (256 of the test "
                             "tokenizer's pieces are about GLUE's usual 128 of a released model's: "
                             "bench/glue_lengths.py)")
    parser.add_argument("--finetune_steps", type=int, default=20,
                        help="finetuning group: batches per distribution, each run once untimed, then timed")
    parser.add_argument("--timeout", type=float, default=150, help="seconds for each system at most")
    parser.add_argument("--budget", type=float, default=0,
                        help="seconds for the whole run, shared among the groups and the kernels in proportion "
                             "to their shares (0: the sum of the shares, %d s)"
                             % (sum(g.budget_s for g in GROUPS) + KERNEL_BUDGET_S))
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU smoke test of the script: every group and part with 2 layers of hidden 64, "
                             "batch 2 x 32, fp32, 1 step (finetuning: 2 per distribution); compiled rows with the "
                             "eager compile backend, on sdpa (dynamo cannot trace the Triton interpreter)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_json_argument(parser, "gpu_attention")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    args.model_overrides = {}
    groups = {group.name: group for group in GROUPS}
    if args.dry_run:
        args.device, args.dtype, args.batch, args.seq, args.steps, args.warmup = "cpu", "fp32", 2, 32, 1, 0
        args.model_overrides = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                    intermediate_size=128, embedding_size=64, vocab_size=500)
        args.kernel_lengths, args.kernel_tokens, args.kernel_heads = "32", 64, 2
        args.finetune_max_length, args.finetune_steps = args.seq, 2
        args.compile_backend = "eager"  # the compiled code path without minutes of code generation
        if not any(arg.startswith("--json") for arg in argv):
            args.json = ""  # a CPU smoke test's figures are no benchmark for bench/results/
        if "--kernels" not in " ".join(argv):
            args.kernels = "sdpa,triton"
    args.kernel_lengths = [int(n) for n in str(args.kernel_lengths).split(",")]
    for name in filter(None, args.groups.split(",")):
        if name not in groups:
            parser.error(f"--groups: unknown group {name!r}; known: {', '.join(GROUP_NAMES)}")
    from deberta.attention import ATTENTION_BACKENDS

    for system in filter(None, args.systems.split(",")):
        ours = system.startswith("ours-") and parse_system(system)[0] in ATTENTION_BACKENDS
        if system not in PEER_SYSTEMS and not ours:
            parser.error(f"--systems: unknown system {system!r}; known: {', '.join(PEER_SYSTEMS)}, "
                         f"ours-<backend>[-unpadded][-compiled] with a backend of {sorted(ATTENTION_BACKENDS)}")

    if args.worker:  # a subprocess: one system, one JSON line
        part, name, system = args.worker.split(":")
        if part == "kernel":
            result = kernel_worker(system, args)
        else:
            worker = finetune_worker if groups[name].finetuning else model_worker
            result = worker(system, groups[name], args)
        print("RESULT " + json.dumps(result))
        return

    chosen = [groups[name] for name in filter(None, args.groups.split(","))]
    shares = [group.budget_s for group in chosen] + [KERNEL_BUDGET_S if args.kernels else 0]
    scale = args.budget / sum(shares) if args.budget and sum(shares) else 1.0
    deadlines = [scale * sum(shares[:i + 1]) for i in range(len(shares))]
    started = time.perf_counter()
    record = {"dtype": args.dtype, "seq": args.seq, "device": args.device,
              "workload": "training step: forward + backward, 15 % targets, no optimizer",
              "finetune_workload": "sequence classification: forward + backward + AdamW on batches drawn from GLUE "
                                   "length distributions; tokens/s of real tokens",
              "flops": "the peers' model work at the same shape: output at every position, no enhanced mask "
                       "decoder, x3 for the backward (module docstring)",
              "groups": {}, "kernels": {}}
    for group, deadline in zip(chosen, deadlines):
        entry = record["groups"][group.name] = {
            "preset": group.preset, "objective": group.objective, "batch": group_batch(group, args),
            "activation_checkpointing": group.checkpointing, "models": {}}
        if group.finetuning:
            entry.update(max_length=args.finetune_max_length, steps=args.finetune_steps,
                         distributions=describe_batches(group, args))
            print(f"{group.name}: {group.preset} sequence classification + AdamW, batch {entry['batch']} from "
                  f"{', '.join(group.distributions)} lengths (at most {args.finetune_max_length}), {args.dtype}, "
                  f"on {args.device}", flush=True)
        else:
            entry["step_gflop_per_token"] = step_flops_per_token(group, args) / 1e9
            print(f"{group.name}: {group.preset} {group.objective.upper()}, batch {entry['batch']} x {args.seq}, "
                  f"{args.dtype}{', activation checkpointing' if group.checkpointing else ''}, on {args.device}",
                  flush=True)
        for system in group_systems(group, args):
            seconds = time_left(deadline, args.timeout, started)
            if seconds < 10:
                figures = {"error": "not run: this group's share of the time budget was spent"}
            else:
                figures = run_worker(f"model:{group.name}:{system}", argv, seconds)
            entry["models"][system] = figures
            if group.finetuning:
                entry["summary"] = {distribution: summarise_models(by_distribution(entry["models"], distribution))
                                    for distribution in group.distributions}
                for distribution in group.distributions if "error" not in figures else ():
                    print_model_row(f"{system} {distribution}", figures[distribution],
                                    entry["summary"][distribution], system)
                if "error" in figures:
                    print_model_row(system, figures, {})
            else:
                entry["summary"] = summarise_models(entry["models"])
                print_model_row(system, figures, entry["summary"])
            save(args, argv, record)
    for system in filter(None, args.kernels.split(",")):
        seconds = time_left(deadlines[-1], args.timeout, started)
        if seconds < 10:
            record["kernels"][system] = figures = {"error": "not run: the time budget was spent"}
        else:
            record["kernels"][system] = figures = run_worker(f"kernel:-:{system}", argv, seconds)
        if "error" in figures:
            print(f"  attention {system:14s} not measured: {figures['error']}", flush=True)
        else:
            for length, row in figures.items():
                extra = f"{row['extra_peak_gib']:.2f} GiB" if row["extra_peak_gib"] is not None else "-"
                print(f"  attention {system:8s} L={length:5s} batch {row['batch']:3d}: "
                      f"{row['ms_forward_backward']:8.2f} ms fwd+bwd, extra peak {extra}", flush=True)
        save(args, argv, record)
    return record


def by_distribution(models: dict, distribution: str) -> dict:
    """{system: its figures on one length distribution} of the finetuning group's systems that ran."""
    return {system: figures[distribution] for system, figures in models.items() if distribution in figures}


def print_model_row(label: str, figures: dict, summary: dict, system: str = "") -> None:
    if "error" in figures:
        print(f"  {label:36s} not measured: {figures['error']}", flush=True)
        return
    peak = f"{figures['peak_gib']:.1f} GiB" if figures["peak_gib"] is not None else "-"
    ratio = summary.get(system or label, {}).get("speed_vs_best_peer")
    ratio = f"  x{ratio:.2f} of the best peer ({summary['best_peer']})" if ratio else ""
    tflops = f"  {figures['model_tflops']:7.1f} model TFLOP/s" if "model_tflops" in figures else ""
    print(f"  {label:36s} {figures['tokens_per_s'] / 1e3:8.1f} K tokens/s{tflops}  peak {peak}{ratio}", flush=True)


def finetune_rows(name: str, entry: dict, args, rows: list, notes: list, number) -> None:
    """The finetuning group's table rows, one per distribution and system, and its notes."""
    for distribution, batches in entry["distributions"].items():
        summary = entry.get("summary", {}).get(distribution, {})
        for system, figures in entry["models"].items():
            label = f"{name} {distribution}"
            if distribution not in figures:
                rows.append([label, system, "not measured", "-", "-", "-", "-"])
                continue
            figures, ratios = figures[distribution], summary.get(system, {})
            rows.append([label, system, number(figures["tokens_per_s"] / 1e3, "{:.1f} K"), "-",
                         number(ratios.get("speed_vs_best_peer"), "x{:.2f}"), number(figures["peak_gib"], "{:.1f}"),
                         number(ratios.get("memory_vs_hf_eager"), "x{:.2f}")])
        notes.append(f"{name} {distribution}: measured batches of mean length {batches['mean_length']:.1f} tokens, "
                     f"longest {batches['longest']}; padding to each batch's longest makes "
                     f"{100 * batches['padding_fraction']:.0f} % of a padded batch padding")
    notes += [f"{name}, {system}: {figures['error']}" for system, figures in entry["models"].items()
              if "error" in figures]
    notes.append(f"{name}: {entry['preset']} sequence classification (2 labels), forward + backward + AdamW, batch "
                 f"{entry['batch']} drawn from GLUE training lengths (bench/glue_lengths.json) cut at "
                 f"{entry['max_length']}, {args.dtype}, {entry['steps']} batches per distribution run once untimed "
                 f"and then timed, the same batches for every system; transformers and ours-<backend> pad each "
                 f"batch to its longest, -unpadded packs it (cu_seqlens, as finetuning's --unpadded)")


def save(args, argv, record) -> None:
    """Everything measured so far, so that a run cut short still reports."""
    def number(value, form):
        return "-" if value is None else form.format(value)

    rows, notes = [], []
    for name, entry in record["groups"].items():
        if "distributions" in entry:
            finetune_rows(name, entry, args, rows, notes, number)
            continue
        for system, figures in entry["models"].items():
            if "error" in figures:
                rows.append([name, system, "not measured", "-", "-", "-", "-"])
                notes.append(f"{name}, {system}: {figures['error']}")
                continue
            ratios = entry.get("summary", {}).get(system, {})
            rows.append([name, system, number(figures["tokens_per_s"] / 1e3, "{:.1f} K"),
                         number(figures["model_tflops"], "{:.1f}"), number(ratios.get("speed_vs_best_peer"), "x{:.2f}"),
                         number(figures["peak_gib"], "{:.1f}"), number(ratios.get("memory_vs_hf_eager"), "x{:.2f}")])
        notes.append(f"{name}: {entry['preset']} {entry['objective'].upper()}, batch {entry['batch']} x {args.seq}, "
                     f"{args.dtype}{', activation checkpointing' if entry['activation_checkpointing'] else ''}; "
                     f"{entry['step_gflop_per_token']:.2f} GFLOP per token and step for every system")
    for system, figures in record["kernels"].items():
        if "error" in figures:
            notes.append(f"attention alone, {system}: not measured ({figures['error']})")
            continue
        for length, row in figures.items():
            notes.append(f"attention alone, {system}, L={length} x batch {row['batch']}: "
                         f"{row['ms_forward_backward']:.2f} ms forward+backward, "
                         f"extra peak {number(row['extra_peak_gib'], '{:.2f} GiB')}")
    finetuning = [entry for entry in record["groups"].values() if "distributions" in entry]
    if len(finetuning) < len(record["groups"]):
        notes.append("model TFLOP/s: the peers' model work (output at every position, no decoder), the same count "
                     "for every system of a group; ours computes the output at the targets only "
                     "(bench/gpu_attention.py)")
    if finetuning:
        notes.append("finetuning rows: tokens/s of real tokens (padding not counted); no FLOP count, since padded "
                     "and packed systems do different work on the same batches. Lengths in the pieces of the "
                     "test tokenizer (tests/assets/spm.model, about twice as many as DeBERTa-v3's); MNLI is not "
                     "in the data, RTE's pairs stand in for it (bench/glue_lengths.py)")
    write_result(args.json, benchmark="gpu_attention",
                 title=f"Our model and attention against the peers, {args.dtype}, sequence {args.seq}",
                 command=command_line("bench.gpu_attention", argv), results=record,
                 columns=["group", "system", "tokens/s", "model TFLOP/s", "vs best peer", "peak GiB",
                          "memory vs transformers eager"],
                 rows=rows, notes=notes)


if __name__ == "__main__":
    main()
