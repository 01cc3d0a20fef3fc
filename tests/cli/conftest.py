"""Fixtures for the CLI tests (helpers live in cli_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Env, Server, Servers, StartServer, make_env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """A fresh isolated environment with its own key."""
    return make_env(tmp_path)


@pytest.fixture
def server(env: Env) -> Iterator[StartServer]:
    """Factory: start a server in ``env`` (killed at the end of the test)."""
    servers = Servers(env)
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """One environment for a module's tests that only read."""
    return make_env(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def shared(shared_env: Env) -> Iterator[Server]:
    """One default ``ppcp serve`` for a module's tests that do not change it."""
    servers = Servers(shared_env)
    yield servers()
    servers.close()
