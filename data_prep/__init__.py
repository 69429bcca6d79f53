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
import importlib

# Names are imported on first use, so that the reader (``from data_prep import
# ShardedDataset`` in every training rank) does not import the writer, pyarrow or MPI.
_MODULE_OF = {"ShardedDataset": "dataset", "load_manifest": "dataset", "normalize_text": "inputs",
              "ShardConfig": "sharding", "run_shard": "sharding"}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
