"""DeBERTa pretraining on DeepSpeed: MLM with the enhanced mask decoder, and v3's RTD with
gradient-disentangled embedding sharing.

    deepspeed pretrain/main.py --ds_config ds_configs/zero2.json --model_config deberta-v3-base \
        --objective rtd --data_dir data/ --output_dir runs/v3 --max_steps 500000
    python -m pretrain.convert runs/v3/checkpoints --output models/v3

Modules: config (flags), recipes (published hyper-parameters), data and masking (shards
to masked batches), objectives (MLM, RTD + GDES), engine (DeepSpeed config, optimizer,
schedule), checkpoint (atomic, exact-resume state), metrics, trainer (the loop), convert.
"""
