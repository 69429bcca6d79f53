"""Tiny models and task files for the finetune tests.

Models are 2 layers of width 32 over the 1001-id test SentencePiece vocabulary, so a
training step takes milliseconds. Files are written per test from the sentences below:
small enough to read at a glance, varied enough that every path has work to do.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from deberta import DebertaConfig, build_model, load_tokenizer, save_model

SPM_MODEL = Path(__file__).resolve().parents[1] / "assets" / "spm.model"
TINY = dict(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, position_buckets=16, max_relative_positions=64)

POSITIVE = ["a wonderful , moving film", "great acting and a smart story", "i loved every minute of it",
            "funny , warm and beautifully made", "the best movie of the year", "a delight from start to end"]
NEGATIVE = ["a dull and tedious mess", "the plot makes no sense at all", "i was bored the whole time",
            "badly acted and far too long", "the worst film of the year", "an ugly , lazy sequel"]


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared with other jobs: one thread per test runs far faster than two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A native model folder with a masked-LM head, as pretraining leaves it."""
    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    save_model(build_model(DebertaConfig(**TINY), "masked_lm"), folder, load_tokenizer(SPM_MODEL))
    return str(folder)


def _write_tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture
def write_tsv():
    """write_tsv(path, header, rows): a tab-separated file with a header row."""
    return _write_tsv


@pytest.fixture
def sentiment_files(tmp_path):
    """SST-2 layout: train.tsv / dev.tsv with sentence, label; test.tsv with index, sentence."""
    rows = [(s, 1) for s in POSITIVE] + [(s, 0) for s in NEGATIVE]
    _write_tsv(tmp_path / "train.tsv", ["sentence", "label"], rows * 2)
    _write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], rows)
    _write_tsv(tmp_path / "test.tsv", ["index", "sentence"], [(i, s) for i, (s, _) in enumerate(rows)])
    return tmp_path


@pytest.fixture
def squad_file(tmp_path):
    """Two paragraphs; one context long enough to need several windows; a SQuAD 2.0 twin."""
    long_context = " ".join(["the river runs past the old mill and"] * 8) + " the town was founded in 1850 ."
    paragraphs = [
        {"context": "Marie Curie won the Nobel Prize in 1903 and again in 1911 .",
         "qas": [{"id": "q1", "question": "When did Curie first win the Nobel Prize ?",
                  "answers": [{"text": "1903", "answer_start": 35}]},
                 {"id": "q2", "question": "Who won the Nobel Prize ?",
                  "answers": [{"text": "Marie Curie", "answer_start": 0}]}]},
        {"context": long_context,
         "qas": [{"id": "q3", "question": "When was the town founded ?",
                  "answers": [{"text": "1850", "answer_start": long_context.index("1850")}]},
                 {"id": "q4", "question": "Who owns the mill ?", "answers": [], "is_impossible": True}]},
    ]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture
def race_files(tmp_path):
    """RACE's folder layout (train/high/*.txt) for training, JSON lines for dev."""
    documents = [
        {"id": "d1", "article": "Tom has a red bike . He rides it to school every day .",
         "questions": ["What colour is the bike ?", "Tom rides the bike to _ ."],
         "options": [["red", "blue", "green", "black"], ["work", "school", "the park", "the shop"]],
         "answers": ["A", "B"]},
        {"id": "d2", "article": "The library opens at nine and closes at five on weekdays .",
         "questions": ["When does the library close ?"],
         "options": [["at noon", "at nine", "at five", "never"]], "answers": ["C"]},
    ]
    (tmp_path / "train" / "high").mkdir(parents=True)
    for d in documents:
        (tmp_path / "train" / "high" / f"{d['id']}.txt").write_text(json.dumps(d))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))
    return tmp_path


CONLL = """-DOCSTART- -X- O

John NNP B-PER
Smith NNP I-PER
visited VBD O
Paris NNP B-LOC
. . O

The DT O
United NNP B-ORG
Nations NNP I-ORG
met VBD O
in IN O
Geneva NNP B-LOC
. . O

"""


@pytest.fixture
def conll_files(tmp_path):
    (tmp_path / "train.txt").write_text(CONLL * 3)
    (tmp_path / "dev.txt").write_text(CONLL)
    return tmp_path


@pytest.fixture(scope="session")
def hf_converted_model(tmp_path_factory):
    """A random transformers DebertaV2ForMaskedLM, saved and converted with deberta.convert."""
    transformers = pytest.importorskip("transformers")
    from deberta.convert import main as convert

    root = tmp_path_factory.mktemp("hf")
    config = transformers.DebertaV2Config(
        vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, relative_attention=True, position_buckets=16, max_relative_positions=64,
        pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False)
    torch.manual_seed(0)
    transformers.DebertaV2ForMaskedLM(config).save_pretrained(root / "hf")
    shutil.copyfile(SPM_MODEL, root / "hf" / "spm.model")  # transformers 5 writes tokenizer.json only
    assert convert([str(root / "hf"), str(root / "native"), "--to", "native"]) == 0
    return str(root / "native")
