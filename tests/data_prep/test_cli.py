"""The command line of data_prep, built by ``deberta.cli.Command`` from the sub-commands'
dataclasses: one boolean syntax, ``--config`` files below flags, bad values exit 2 naming
the field, ``--input`` repeatable. Most tests parse in-process with the work stubbed out."""
from __future__ import annotations

import json

import pytest

import data_prep.checks
import data_prep.sharding
import data_prep.tokenizer_training
from data_prep.cli import main

from data_prep_helpers import TINY_SPM, run_cli

REQUIRED = ("--input", "a.txt", "--tokenizer", "tok/spm.model", "--output", "out")


@pytest.fixture
def shard_config(monkeypatch):
    """``parse(*argv)``: the ShardConfig that ``shard`` would run with."""
    seen = []
    monkeypatch.setattr(data_prep.sharding, "run_shard", lambda config: seen.append(config) or 0)

    def parse(*argv):
        assert main(["shard", *map(str, argv)]) == 0
        return seen.pop()
    return parse


def exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in argv])
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("flags, dedup", [((), False), (("--dedup",), True), (("--dedup", "true"), True),
                                          (("--dedup", "yes"), True), (("--dedup=true",), True),
                                          (("--dedup", "false"), False), (("--no_dedup",), False),
                                          (("--no-dedup",), False), (("--dedup", "--no_dedup"), False)])
def test_boolean_syntax(shard_config, flags, dedup):
    assert shard_config(*REQUIRED, *flags).dedup is dedup


def test_other_booleans_and_values(shard_config):
    config = shard_config(*REQUIRED, "--overwrite", "true", "--allow-unreadable", "--seq_len", 128,
                          "--valid_fraction", 0, "--workers", 3, "--shard_size_mb", 0.5, "--text_field", "body")
    assert (config.overwrite, config.allow_unreadable, config.seq_len, config.valid_fraction, config.workers,
            config.shard_size_mb, config.text_field) == (True, True, 128, 0.0, 3, 0.5, "body")


def test_repeated_input_appends(shard_config):
    assert shard_config(*REQUIRED).inputs == ["a.txt"]
    assert shard_config(*REQUIRED, "--input", "b/*.jsonl").inputs == ["a.txt", "b/*.jsonl"]
    assert shard_config(*REQUIRED, "--input", "[b.txt, c.txt]", "--input=d.txt").inputs == \
        ["a.txt", "b.txt", "c.txt", "d.txt"]


def test_config_file_below_flags(shard_config, tmp_path):
    (tmp_path / "shard.yaml").write_text("inputs: [x.txt, y.txt]\ntokenizer: tok/spm.model\noutput: out\n"
                                         "seq_len: 128\ndedup: true\nworkers: 4\n")
    config = shard_config("--config", tmp_path / "shard.yaml")
    assert (config.inputs, config.seq_len, config.dedup, config.workers) == (["x.txt", "y.txt"], 128, True, 4)
    # A flag wins over the file wherever --config stands; repeated --input replaces the file's list.
    for argv in (("--config", tmp_path / "shard.yaml", "--seq_len", 256, "--no_dedup"),
                 ("--seq_len", 256, "--dedup", "false", "--config", tmp_path / "shard.yaml")):
        config = shard_config(*argv)
        assert (config.seq_len, config.dedup, config.workers) == (256, False, 4)
    assert shard_config("--config", tmp_path / "shard.yaml", "--input", "z.txt").inputs == ["z.txt"]
    (tmp_path / "shard.json").write_text(json.dumps({"inputs": ["j.txt"], "tokenizer": "t", "output": "o",
                                                     "dedup": True}))
    config = shard_config("--config", tmp_path / "shard.json")
    assert (config.inputs, config.dedup) == (["j.txt"], True)


@pytest.mark.parametrize("flags, named", [(("--valid_fraction", 1.5), "--valid_fraction"),
                                          (("--workers", 0), "--workers"),
                                          (("--seq_len", "long"), "seq_len"),
                                          (("--dedup", "maybe"), "--dedup"),
                                          (("--shard_size_mb", -1), "--shard_size_mb"),
                                          (("--no_such_flag", 1), "--no_such_flag")])
def test_bad_value_exits_2_naming_the_field(shard_config, capsys, flags, named):
    code, err = exit_code(("shard", *REQUIRED, *flags), capsys)
    assert code == 2 and named in err


def test_missing_required_exits_2(shard_config, capsys):
    code, err = exit_code(("shard", "--input", "a.txt", "--output", "out"), capsys)
    assert code == 2 and "tokenizer" in err


def test_tokenizer_options(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(data_prep.tokenizer_training, "run_tokenizer", seen.append)
    assert main(["tokenizer", "--from", "spm.model", "--output", "tok"]) == 0
    assert (seen[-1].source, seen[-1].output, seen[-1].inputs) == ("spm.model", "tok", [])
    assert main(["tokenizer", "--input", "a.txt", "--input", "b.txt", "--vocab_size", "300",
                 "--model_type", "bpe", "--output", "tok"]) == 0
    assert (seen[-1].inputs, seen[-1].vocab_size, seen[-1].model_type) == (["a.txt", "b.txt"], 300, "bpe")
    code, err = exit_code(("tokenizer", "--output", "tok"), capsys)
    assert code == 2 and "--input" in err and "--from" in err
    code, err = exit_code(("tokenizer", "--input", "a.txt", "--output", "tok", "--model_type", "wordpiece"), capsys)
    assert code == 2 and "model_type" in err


def test_verify_and_inspect_options(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(data_prep.checks, "verify", lambda *args: calls.append(args) or [])
    monkeypatch.setattr(data_prep.checks, "inspect", lambda *args: calls.append(args) or "report")
    assert main(["verify", "data", "--quick", "--tokenizer", "t.model"]) == 0
    assert main(["verify", "--quick", "false", "data"]) == 0
    assert main(["inspect", "data", "--decode", "3", "--split", "valid"]) == 0
    assert calls == [("data", "t.model", True), ("data", None, False), ("data", 3, "valid")]
    code, err = exit_code(("inspect", "data", "--decode", "-1"), capsys)
    assert code == 2 and "--decode" in err
    code, err = exit_code(("verify",), capsys)
    assert code == 2 and "data_dir" in err


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("tokenizer", "shard", "verify", "inspect"))
    assert main([]) == 2 and main(["shards"]) == 2
    assert "unknown command 'shards'" in capsys.readouterr().err


def test_shard_command_end_to_end(tmp_path):
    """The real command: two --input files, --dedup true, a config file for the rest."""
    (tmp_path / "a.txt").write_text("the first document\n\nthe same words again\n\nthe first document\n")
    (tmp_path / "b.txt").write_text("another file with words\n")
    (tmp_path / "shard.yaml").write_text(f"tokenizer: {TINY_SPM}\nseq_len: 16\nvalid_fraction: 0.0\n"
                                         "progress_interval: 1000\n")
    run_cli("shard", "--config", tmp_path / "shard.yaml", "--input", tmp_path / "a.txt",
            "--input", tmp_path / "b.txt", "--output", tmp_path / "data", "--dedup", "true", "--seq_len", 32)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["settings"]["dedup"] is True and manifest["settings"]["seq_len"] == 32
    assert len(manifest["inputs"]) == 2
    assert manifest["splits"]["train"]["documents"] == 3          # the copy of the first one dropped
    assert run_cli("verify", tmp_path / "data").returncode == 0
