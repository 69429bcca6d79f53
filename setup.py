"""Install the DeBERTa pipeline: the model library and the data_prep, pretrain and finetune packages.

torch is pinned to the CPU wheel version that the CI machines carry on disk: an unpinned
``torch`` would pull a multi-GB CUDA build onto a CPU-only machine. GPU machines install
their own CUDA build of the same release first; pip then keeps it.
"""
from setuptools import find_packages, setup

setup(
    name="deberta-pipeline",
    version="0.1.0",
    description="DeBERTa v1/v2/v3 pretraining (MLM, RTD+GDES) and finetuning on DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["deberta*", "data_prep*", "pretrain*", "finetune*"]),
    install_requires=[
        "torch==2.13.0",
        "deepspeed>=0.19,<0.20",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "numpy>=1.26",
        "datasets>=3.0",
        "tensorboard>=2.15",
        "tqdm>=4.66",
    ],
    extras_require={
        "mpi": ["mpi4py>=4.0", "mpich>=4.2"],
        "test": [
            "pytest>=8",
            "transformers==5.24.0",
            "scikit-learn>=1.4",  # metric oracles for the finetune tests
            "scipy>=1.11",
            "protobuf>=4",
            "mpi4py>=4.0",
            "mpich>=4.2",
        ],
    },
)
