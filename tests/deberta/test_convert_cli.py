"""The flags of ``python -m deberta.convert SRC DST --to native|hf [--head HEAD]``: built by
``deberta.cli.Command`` (positional folders, ``--config``, exit 2 naming a bad value)."""
import json
import subprocess
import sys

import pytest

from deberta import DebertaConfig, build_model, load_model, save_model
from deberta.convert import build_command, main

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, max_relative_positions=32, position_buckets=8)


def parse(*argv):
    command = build_command()
    namespace = command.parse_namespace([str(a) for a in argv])
    return namespace.src, namespace.dst, command.build(namespace)["convert"]


def test_positionals_and_flags_in_any_order():
    for argv in (("a", "b", "--to", "hf"), ("--to", "hf", "a", "b"), ("a", "--to=hf", "b")):
        src, dst, config = parse(*argv)
        assert (src, dst, config.to, config.head) == ("a", "b", "hf", None)
    assert parse("a", "b", "--to", "native", "--head", "backbone")[2].head == "backbone"


def test_config_file_and_flags_win(tmp_path):
    (tmp_path / "convert.yaml").write_text("to: hf\nhead: masked_lm\n")
    (tmp_path / "convert.json").write_text(json.dumps({"to": "hf"}))
    assert parse("a", "b", "--config", tmp_path / "convert.yaml")[2].head == "masked_lm"
    config = parse("--to", "native", "a", "b", "--config", tmp_path / "convert.yaml")[2]
    assert (config.to, config.head) == ("native", "masked_lm")
    assert parse("a", "b", "--config", tmp_path / "convert.json")[2].to == "hf"


@pytest.mark.parametrize("argv, named", [(("a", "b"), "to"), (("a", "b", "--to", "onnx"), "to"),
                                         (("a", "b", "--to", "hf", "--head", "nohead"), "head"),
                                         (("a", "--to", "hf"), "dst")])
def test_bad_command_line_exits_2_naming_it(argv, named, capsys):
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2 and named in capsys.readouterr().err


def test_missing_source_exits_1(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "--to", "native"]) == 1
    assert "nope" in capsys.readouterr().err


def test_head_flag_converts(tmp_path):
    """A native masked-LM folder to a Hugging Face backbone folder, through the real command."""
    save_model(build_model(DebertaConfig(**TINY), "masked_lm"), tmp_path / "mlm")
    done = subprocess.run([sys.executable, "-m", "deberta.convert", str(tmp_path / "mlm"), str(tmp_path / "hf"),
                           "--to", "hf", "--head", "backbone"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_model(tmp_path / "hf").head == "backbone"
