"""DeBERTa pretraining on DeepSpeed: MLM with the enhanced mask decoder, v3's RTD with
gradient-disentangled embedding sharing, or any objective given as ``module:Class``.

    deepspeed pretrain/main.py --ds_config ds_configs/zero2.json --model_config deberta-v3-base \
        --objective rtd --data_dir data/ --output_dir runs/v3 --max_steps 500000
    python -m pretrain.convert runs/v3/checkpoints --output models/v3

Modules: config (the command and its dataclasses), recipes (published hyper-parameters),
data and masking (shards to masked batches), objectives (the plugin protocol; mlm, rtd),
metrics (AUC, FLOPs), checkpoint (atomic, exact-resume state), trainer (the loop),
convert. The optimizer, DeepSpeed config, rank agreement and outputs are the shared
``training`` core.
"""
