"""Every input a user can get wrong ends with one ``error:`` line that names the file, line or
field and says what to do, an exit code of 1 (data, files) or 2 (settings), no traceback
unless --debug or DEBERTA_DEBUG=1 asks for it, and nothing already written damaged.

The quick tests call each command's ``main`` in this process on real broken files; one
parametrised subprocess test checks the exit codes and the absence of a traceback as a
user at a shell sees them.
"""
from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.cli import main as data_prep_main
from deberta import DebertaConfig, build_model, load_tokenizer, save_model
from deberta.convert import main as convert_main
from deberta.errors import DEBUG_ENV, InputError, SettingsError, report
from pretrain.convert import main as pretrain_convert_main

REPO = Path(__file__).resolve().parents[1]
SPM_MODEL = REPO / "tests" / "assets" / "spm.model"
TINY = dict(vocab_size=1001, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, max_relative_positions=64, position_buckets=16)


def words_corpus(path: Path, documents: int = 200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocabulary = "river stone light window music garden paper winter table morning ocean silver".split()
    path.write_text("\n\n".join(" ".join(rng.choice(vocabulary) for _ in range(30)) + "."
                                for _ in range(documents)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "model"
    torch.manual_seed(0)
    save_model(build_model(DebertaConfig(**TINY, position_biased_input=True, emd_layers=0), "masked_lm"), folder,
               load_tokenizer(SPM_MODEL))
    return folder


def damaged_copy(model_folder: Path, tmp_path: Path, file: str, keep_fraction: float) -> Path:
    """The model folder with ``file`` cut to a fraction of its bytes, as an interrupted copy leaves it."""
    folder = tmp_path / f"damaged_{file.replace('.', '_')}"
    folder.mkdir()
    for item in model_folder.iterdir():
        data = item.read_bytes()
        (folder / item.name).write_bytes(data[: int(len(data) * keep_fraction)] if item.name == file else data)
    return folder


def one_error_line(err: str) -> str:
    """The ``error:`` line of stderr; there is exactly one, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- data_prep tokenizer -----------------------------------------------------------------

def test_tokenizer_on_a_pattern_that_matches_nothing(tmp_path, capsys):
    assert data_prep_main(["tokenizer", "--input", str(tmp_path / "corpus" / "*.txt"),
                           "--output", str(tmp_path / "tok")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"--input '{tmp_path / 'corpus' / '*.txt'}' matches no file" in line and "check the path" in line
    assert not (tmp_path / "tok").exists()


def test_tokenizer_on_a_truncated_gz_names_the_file(tmp_path, capsys):
    good = words_corpus(tmp_path / "a.txt")
    data = gzip.compress(words_corpus(tmp_path / "b.txt", seed=1).read_bytes())
    truncated = tmp_path / "b.txt.gz"
    truncated.write_bytes(data[: len(data) // 2])
    assert data_prep_main(["tokenizer", "--input", str(good), "--input", str(truncated), "--vocab_size", "30",
                           "--output", str(tmp_path / "tok")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{truncated}: cannot be read (EOFError" in line and "leave it out of --input" in line


def test_a_vocabulary_larger_than_the_corpus_holds_leaves_no_folder(tmp_path, capsys):
    corpus = words_corpus(tmp_path / "a.txt")
    assert data_prep_main(["tokenizer", "--input", str(corpus), "--vocab_size", "5000",
                           "--output", str(tmp_path / "tok")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--vocab_size 5000 is more than the" in line and "lower --vocab_size or give more text" in line
    assert not (tmp_path / "tok").exists()
    # An existing folder (with the user's files) is kept as it was.
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "notes.txt").write_text("mine")
    assert data_prep_main(["tokenizer", "--input", str(corpus), "--vocab_size", "5000",
                           "--output", str(tmp_path / "tok")]) == 1
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["notes.txt"]


def test_debug_flag_and_environment_add_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["tokenizer", "--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "tok")]
    assert data_prep_main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: --input")
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert data_prep_main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_shard_on_a_missing_tokenizer_and_a_damaged_manifest(tmp_path, capsys):
    corpus = words_corpus(tmp_path / "a.txt")
    assert data_prep_main(["shard", "--input", str(corpus), "--tokenizer", str(tmp_path / "nope.model"),
                           "--output", str(tmp_path / "data")]) == 1
    assert "nope.model" in one_error_line(capsys.readouterr().err)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.json").write_text('{"format": "deberta-data-prep", ')
    assert data_prep_main(["inspect", str(tmp_path / "data")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'data' / 'manifest.json'}: damaged" in line and "--overwrite" in line


def test_shard_without_the_text_field_or_onto_a_file(tmp_path, capsys):
    records = tmp_path / "a.jsonl"
    records.write_text("".join(f'{{"body": "document number {i}"}}\n' for i in range(20)))
    assert data_prep_main(["shard", "--input", str(records), "--tokenizer", str(SPM_MODEL),
                           "--output", str(tmp_path / "data")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no document in 1 input piece(s): 20 x missing_text_field (see --text_field)" in line
    assert "add --overwrite" in line
    assert f"{records}:1: no string field 'text' (fields: body)" in line
    assert data_prep_main(["shard", "--input", str(records), "--tokenizer", str(SPM_MODEL), "--text_field", "body",
                           "--output", str(tmp_path / "data"), "--overwrite"]) == 0
    capsys.readouterr()
    assert data_prep_main(["shard", "--input", str(records), "--tokenizer", str(SPM_MODEL),
                           "--output", str(records)]) == 1
    assert f"--output {records} is a file" in one_error_line(capsys.readouterr().err)


# --- model folders: deberta.convert and finetune -------------------------------------------

def test_convert_names_a_damaged_weights_file(model_folder, tmp_path, capsys):
    damaged = damaged_copy(model_folder, tmp_path, "model.safetensors", 0.5)
    assert convert_main([str(damaged), str(tmp_path / "out"), "--to", "hf"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{damaged / 'model.safetensors'}: damaged or incomplete weights file" in line
    assert not (tmp_path / "out").exists()


def test_convert_names_the_line_and_column_of_a_broken_config(model_folder, tmp_path, capsys):
    damaged = damaged_copy(model_folder, tmp_path, "config.json", 0.6)
    assert convert_main([str(damaged), str(tmp_path / "out"), "--to", "native"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{damaged / 'config.json'}: not valid JSON (line " in line and "column" in line


def test_convert_says_that_the_folder_does_not_exist(tmp_path, capsys):
    assert convert_main([str(tmp_path / "nope"), str(tmp_path / "out"), "--to", "native"]) == 1
    assert f"{tmp_path / 'nope'}: model folder not found" in one_error_line(capsys.readouterr().err)


def test_a_pretraining_checkpoint_where_a_model_folder_belongs(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step_00000010").mkdir(parents=True)
    (checkpoints / "latest").write_text("step_00000010\n")
    (checkpoints / "step_00000010" / "checkpoint.json").write_text("{}")
    for folder in (checkpoints, checkpoints / "step_00000010"):
        assert convert_main([str(folder), str(tmp_path / "out"), "--to", "hf"]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert f"it is a pretraining checkpoint: write a model folder from it with `python -m pretrain.convert " \
               f"{checkpoints} --output DIR`" in line


def test_pretrain_convert_without_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        pretrain_convert_main([str(tmp_path), "--output", str(tmp_path / "model")])
    assert exited.value.code == 1
    assert f"{tmp_path}: no complete checkpoint" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def glue_files(tmp_path) -> Path:
    folder = tmp_path / "sst2"
    folder.mkdir()
    rows = "".join(f"{s}\t{label}\n" for s, label in [("a fine film", 1), ("a dull film", 0)] * 4)
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    return folder


def finetune(model: Path, data: Path, out: Path, *flags: str) -> int:
    from finetune.main import main
    return main(["--task", "sst-2", "--data_dir", str(data), "--model", str(model), "--output_dir", str(out),
                 "--tensorboard", "false", *flags])


def test_finetune_reports_model_folder_problems(model_folder, glue_files, tmp_path, capsys):
    assert finetune(tmp_path / "nope", glue_files, tmp_path / "a") == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'nope'}: model folder not found" in line and "tokenizer" not in line

    damaged = damaged_copy(model_folder, tmp_path, "model.safetensors", 0.9)
    assert finetune(damaged, glue_files, tmp_path / "b") == 1
    assert f"{damaged / 'model.safetensors'}: damaged" in one_error_line(capsys.readouterr().err)

    assert finetune(model_folder, glue_files, tmp_path / "c", "--max_seq_length", "128") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--max_seq_length 128 exceeds the model's max_position_embeddings=64" in line
    assert "use --max_seq_length 64 or less" in line


def test_pretraining_sequences_beyond_the_absolute_positions(tmp_path, capsys):
    from pretrain.trainer import main as pretrain_main
    assert data_prep_main(["shard", "--input", str(words_corpus(tmp_path / "a.txt")), "--tokenizer", str(SPM_MODEL),
                           "--output", str(tmp_path / "data"), "--seq_len", "64"]) == 0
    capsys.readouterr()
    model = ("hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,vocab_size=1001,"
             "position_biased_input=true,emd_layers=0,max_position_embeddings=32,max_relative_positions=64,"
             "position_buckets=16")
    argv = ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"), "--set_model", model,
            "--ds_config", str(REPO / "ds_configs" / "zero1.json"), "--tensorboard", "false"]
    with pytest.raises(SystemExit) as exited:
        pretrain_main(argv)
    assert exited.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'data'} holds sequences of 64 tokens, more than the model's 32 absolute positions" in line
    assert "max_position_embeddings=64" in line
    with pytest.raises(SystemExit) as exited:
        pretrain_main([*argv[:1], str(tmp_path / "nodata"), *argv[2:]])
    assert exited.value.code == 1
    assert "manifest.json not found" in one_error_line(capsys.readouterr().err)


# --- the reporter ----------------------------------------------------------------------------

def test_only_rank_zero_reports_an_error_every_rank_meets(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert report(SettingsError("--x is wrong"), debug=False) == 2
    assert capsys.readouterr().err == ""
    local = InputError("rank-local problem")
    local.every_rank = False
    assert report(local, debug=False) == 1
    assert capsys.readouterr().err == "error: rank 1: rank-local problem\n"
    monkeypatch.setenv("RANK", "0")
    assert report(SettingsError("--x is wrong"), debug=False) == 2
    assert capsys.readouterr().err == "error: --x is wrong\n"


def test_only_rank_zero_reports_a_bad_command_line(capsys, monkeypatch):
    from pretrain.config import parse_args
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--data_dir", "d", "--max_steps", "0"])
    assert exited.value.code == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--data_dir", "d", "--max_steps", "0"])
    assert exited.value.code == 2 and "max_steps=0" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE")  # a RANK left in a shell, no launcher: not a rank of a job
    with pytest.raises(SystemExit):
        parse_args(["--data_dir", "d", "--max_steps", "0"])
    assert "max_steps=0" in capsys.readouterr().err


# --- as a user at a shell sees it -------------------------------------------------------------

@pytest.mark.parametrize("command, code, message", [
    (["-m", "data_prep", "tokenizer", "--input", "{tmp}/none/*.txt", "--output", "{tmp}/tok"], 1, "matches no file"),
    (["-m", "data_prep", "verify", "{tmp}/nodata"], 1, "manifest.json not found"),
    pytest.param(["-m", "deberta.convert", "{tmp}/nomodel", "{tmp}/out", "--to", "hf"], 1, "model folder not found",
                 marks=pytest.mark.slow),  # imports torch: seconds
    (["-m", "data_prep", "shard", "--input", "x.txt", "--tokenizer", "t", "--output", "o", "--seq_len", "2"], 2,
     "seq_len=2"),
])
def test_exit_codes_and_no_traceback_in_a_shell(tmp_path, command, code, message):
    argv = [part.format(tmp=tmp_path) for part in command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop(DEBUG_ENV, None)
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and message in done.stderr, done.stderr
