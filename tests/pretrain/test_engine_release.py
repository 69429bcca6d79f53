"""A pretraining run releases its engines before it shuts the process group down: ZeRO's
gradient hooks tie an engine to its parameters through autograd, where the collector cannot
free it, and an engine left alive keeps its process groups until the interpreter tears them
down in no set order."""
from __future__ import annotations

import weakref

import pytest
from pretrain_helpers import train_args

import pretrain.trainer


@pytest.mark.parametrize("objective", ["mlm", pytest.param("rtd", marks=pytest.mark.slow)])
def test_the_engines_are_gone_when_the_run_ends(corpus_shards, tmp_path, monkeypatch, objective):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    build_engine, engines = pretrain.trainer.build_engine, []

    def recorded(*args, **kwargs):
        engine = build_engine(*args, **kwargs)
        engines.append(weakref.ref(engine))
        return engine

    shutdown, alive_at_shutdown = pretrain.trainer.shutdown, []

    def recorded_shutdown():
        shutdown()  # which collects what is garbage
        alive_at_shutdown.extend(engine for engine in engines if engine() is not None)

    monkeypatch.setattr(pretrain.trainer, "build_engine", recorded)
    monkeypatch.setattr(pretrain.trainer, "shutdown", recorded_shutdown)
    argv = train_args(corpus_shards, tmp_path / "out", objective=objective, max_steps=2, num_workers=0,
                      eval_samples=8)
    with pytest.raises(SystemExit) as ended:
        pretrain.trainer.main(argv)
    assert ended.value.code == 0
    assert len(engines) == (2 if objective == "rtd" else 1) and alive_at_shutdown == []
