"""Importing the shard reader stays light: no writer, no pyarrow, no MPI in a training rank."""
import subprocess
import sys

HEAVY = ("pyarrow", "mpi4py", "data_prep.sharding", "data_prep.writing")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_reader_does_not_import_the_writer():
    assert _loaded_after("from data_prep import ShardedDataset") == []


def test_writer_names_still_import_from_the_package():
    assert "data_prep.sharding" in _loaded_after("from data_prep import ShardConfig, run_shard")
