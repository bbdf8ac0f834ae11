"""Fixtures for the API tests: an app with the fake pipeline and prior loader injected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_helpers import AUTH, TOKEN, FakeLoader, FakePipeline
from nfsd_server.api.app import ServerConfig, create_app


@pytest.fixture
def fake_pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def fake_loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def make_client(tmp_path, fake_pipeline, fake_loader):
    """``make_client(**config)`` → a started TestClient on an app with the fakes injected (closed at teardown)."""
    clients: list[TestClient] = []

    def make(data_dir: Path | None = None, start_worker: bool = True, **config: Any) -> TestClient:
        config.setdefault("token", TOKEN)
        config.setdefault("default_prior", "analytic")
        app = create_app(
            ServerConfig(data_dir=data_dir or tmp_path / "jobs", **config),
            run_fn=fake_pipeline, load_prior_fn=fake_loader, start_worker=start_worker,
        )
        client = TestClient(app, headers=AUTH, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    fake_pipeline.gate.set()
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
