"""Benchmarks, run from the repository root as modules (``python -m bench.model_step``), so
that the packages they measure are imported as installed, never shadowed by these scripts.
Each writes its figures to ``bench/results/NAME.json``; ``python -m bench.report`` turns all
of them into docs/benchmarks.md."""
