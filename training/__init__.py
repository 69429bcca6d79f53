"""The training core shared by ``pretrain`` and ``finetune``.

config        OptimizerConfig and EngineConfig: the flags both commands have, with the same names
optim         parameter groups (what is decayed), AdamW, the warm-up + linear-decay schedule
ds_config     the DeepSpeed JSON resolved against the flags: batch sizes, precision, ZeRO, clipping
distributed   process-group start (a world of one without a launcher) and clean shutdown
engine        the DeepSpeed engine for a module (every run, one device included, goes through it)
sync          what all ranks must agree on in a step, in one all-reduce and one host transfer
outputs       rank 0's progress line, metrics.jsonl, eval.jsonl, TensorBoard and summary.json
"""
