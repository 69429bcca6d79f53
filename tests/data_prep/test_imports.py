"""Importing the shard reader stays light: no writer, no pyarrow, no MPI in a training rank; and
shard loads pyarrow only for the inputs that need it."""
import subprocess
import sys

from data_prep_helpers import TINY_SPM

HEAVY = ("pyarrow", "mpi4py", "data_prep.sharding", "data_prep.writing")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_reader_does_not_import_the_writer():
    assert _loaded_after("from data_prep import ShardedDataset") == []


def test_writer_names_still_import_from_the_package():
    assert "data_prep.sharding" in _loaded_after("from data_prep import ShardConfig, run_shard")


def test_shard_of_text_inputs_does_not_import_pyarrow(tmp_path):
    (tmp_path / "a.txt").write_text("one document\n\nanother one\n")
    statement = (f"from data_prep.cli import main\n"
                 f"assert main(['shard', '--input', {str(tmp_path / 'a.txt')!r}, '--tokenizer', {str(TINY_SPM)!r}, "
                 f"'--output', {str(tmp_path / 'data')!r}, '--valid_fraction', '0']) == 0")
    assert _loaded_after(statement) == ["data_prep.sharding", "data_prep.writing"]
