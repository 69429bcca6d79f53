"""The project as a package: it installs with its console scripts, and nothing in the
repository edits sys.path to find its own modules."""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("deberta-data-prep", "deberta-pretrain", "deberta-pretrain-convert", "deberta-finetune",
            "deberta-convert")


def test_no_module_edits_sys_path():
    offenders = [str(path.relative_to(REPO)) for path in REPO.rglob("*.py")
                 if not {".git", "build"} & set(path.relative_to(REPO).parts)
                 and "sys.path" in path.read_text(encoding="utf-8") and path != Path(__file__)]
    assert offenders == []


@pytest.mark.slow
def test_pip_install_puts_every_command_on_the_path(tmp_path):
    """A fresh environment (reusing this one's installed dependencies, so nothing is
    downloaded) gets the console scripts from `pip install .`, and each answers --help."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the repository
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}", "DS_ACCELERATOR": "cpu"}
    env.pop("PYTHONPATH", None)
    for command in COMMANDS:
        script = env_dir / "bin" / command
        assert script.is_file(), f"{command} not installed"
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300, env=env,
                                cwd=tmp_path)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (command, result.stderr[-2000:])
    # The installed package, not the repository, answered.
    where = subprocess.run([str(python), "-c", "import training; print(training.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert str(env_dir) in where.stdout, where
