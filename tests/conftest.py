from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import Backend


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend(name="b1")
    yield b
    b.stop()


@pytest.fixture
def backend2() -> Iterator[Backend]:
    b = Backend(name="b2")
    yield b
    b.stop()


@pytest.fixture
def three() -> Iterator[list[Backend]]:
    bs = [Backend(name=f"b{i}") for i in range(3)]
    yield bs
    for b in bs:
        b.stop()
