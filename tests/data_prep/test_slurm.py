"""`sbatch slurm/data_prep.sh` with 2 MPI ranks under a real one-node Slurm
(tests/slurm_harness.py): the ranks find each other through srun's PMI, and the shards
are the bytes a single process writes."""
import pytest
import subprocess
from data_prep_helpers import CORPUS, REPO, TINY_SPM, folder_bytes, run_cli
from slurm_harness import slurm_log, wait_for_job
from data_prep.checks import VERIFIED_STAMP

pytestmark = pytest.mark.slow


def test_sbatch_data_prep_two_ranks(slurm_cluster, tmp_path):
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    env, root = slurm_cluster
    settings = {"INPUT": str(CORPUS / "inaugural.txt"), "TOKENIZER": str(TINY_SPM), "SEQ_LEN": "64",
                "VALID_FRACTION": "0.05"}
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem-per-cpu=0",
         "--time=10", f"--output={tmp_path / 'job.out'}", "slurm/data_prep.sh"],
        cwd=REPO, env={**env, **settings, "OUTPUT": str(tmp_path / "by_slurm")}, capture_output=True, text=True,
        timeout=30)
    assert submit.returncode == 0, submit.stderr + slurm_log(root)
    state = wait_for_job(submit.stdout.strip().split(";")[0], env, 240)
    output = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED", f"{state}\n{output[-4000:]}\n{slurm_log(root)}"
    assert "rank 0/2" in output and ": OK" in output  # two ranks, and verify passed

    run_cli("shard", "--input", settings["INPUT"], "--tokenizer", TINY_SPM, "--output", tmp_path / "single",
            "--seq_len", "64", "--valid_fraction", "0.05", "--dedup")
    by_slurm = folder_bytes(tmp_path / "by_slurm")
    assert VERIFIED_STAMP in by_slurm  # the job's verify leaves its stamp; the data is the same bytes
    del by_slurm[VERIFIED_STAMP]
    assert by_slurm == folder_bytes(tmp_path / "single")
