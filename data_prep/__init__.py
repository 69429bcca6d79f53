"""Data preparation for DeBERTa pretraining: raw text to verified, packed token-id shards.

Command line (see ``python -m data_prep COMMAND --help``)::

    python -m data_prep tokenizer --input 'corpus/*.txt' --vocab_size 128000 --output tok/
    python -m data_prep shard --input 'corpus/*' --tokenizer tok/spm.model --output data/ \\
           --seq_len 512 --valid_fraction 0.005 [--workers N] [--dedup]
    mpiexec -n 64 python -m data_prep shard ...      # same bytes as one process
    python -m data_prep verify data/                  # exit 1 and say what is wrong
    python -m data_prep inspect data/ --decode 3

Reading the data in pretraining::

    from data_prep import ShardedDataset
    ds = ShardedDataset("data/", split="train")     # or split="valid"
    len(ds)              # number of sequences
    ds[i]                # numpy array (read-only view of a memory map, dtype ds.dtype):
                         #   [CLS] t_1 .. t_k [SEP], k = ds.seq_len - 2 (fewer only in the last)
    ds.seq_len, ds.vocab_size, ds.special_ids    # {"[PAD]": 0, "[CLS]": 1, ..., "[MASK]": ...}
    ds.num_tokens        # text tokens of the split (without [CLS]/[SEP])
    ds.num_documents, ds.document(d)             # token ids of document d (a copy)
    ds.tokens(begin, end)                        # a slice of the split's token stream
    ds.load_tokenizer()  # the tokenizer the data was made with (copied into data/tokenizer/)
    ds.check_tokenizer(path)   # raises ValueError if another tokenizer would misread the ids
    ds.manifest          # the parsed manifest.json

Sequences are the official DeBERTa packing: a split's documents are concatenated in corpus
order and cut every ``seq_len - 2`` tokens, so a sequence may hold the end of one document
and the start of the next, with no separator between them. ``ds[i]`` is cheap and safe to
call from DataLoader workers (the dataset pickles without its memory maps); convert with
``torch.from_numpy(ds[i].astype(np.int64))``.
"""
from .dataset import ShardedDataset, load_manifest
from .inputs import normalize_text
from .sharding import ShardConfig, run_shard

__all__ = ["ShardedDataset", "ShardConfig", "load_manifest", "normalize_text", "run_shard"]
