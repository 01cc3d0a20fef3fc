"""Fixtures for the core tests (helpers live in core_helpers.py)."""

from __future__ import annotations

import pytest
from core_helpers import BYTEWISE, WHOLE, Pair


@pytest.fixture(params=[WHOLE, BYTEWISE], ids=["whole", "bytewise"])
def size(request: pytest.FixtureRequest) -> int | None:
    """Feed mode: whole writes, or one byte per receive_data() call."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def pair(size: int | None) -> Pair:
    """An authenticated client/server pair (fed in the parametrised mode)."""
    return Pair(size=size).established()
