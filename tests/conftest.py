"""Shared fixtures: the real ML-100K and ML-1M data (read from ../shared, never copied) and small generated streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import write_generated_stream

from diet_engine.data.schema import StreamSchema

ML100K_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
ML1M_RAW = ML100K_RAW.parent / "ml-1m"


@pytest.fixture(autouse=True, scope="session")
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamSchema, Path]:
    out = tmp_path_factory.mktemp("tiny")
    return write_generated_stream(out), out


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ML100K_RAW.is_dir():
        pytest.fail(f"MovieLens-100K is expected at {ML100K_RAW} (the project's shared data folder)")
    from diet_engine.data.convert.ml_100k import convert_ml100k

    out = tmp_path_factory.mktemp("ml100k-engine")
    convert_ml100k(ML100K_RAW, out)
    return out


@pytest.fixture(scope="session")
def ml1m_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ML-1M converted once per session, through the bench's raw-folder path (`prepare_data`)."""
    if not ML1M_RAW.is_dir():
        pytest.fail(f"MovieLens-1M is expected at {ML1M_RAW} (the project's shared data folder)")
    from diet_engine.evaluate.bench import prepare_data

    _, converted = prepare_data(ML1M_RAW, tmp_path_factory.mktemp("ml1m-engine"))
    return converted
