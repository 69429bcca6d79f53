"""Fixtures of the data_prep tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from data_prep_helpers import CORPUS


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "inaugural.txt").is_file():
        pytest.skip(f"the shared corpus is absent ({CORPUS}); see ../shared/data/README.md")
    return CORPUS

