"""Fixtures of the API tests: a migrated database (SQLite and PostgreSQL through `db_url`), one
token per role, an in-process client, a real uvicorn server on 127.0.0.1 for the tests that
need concurrency, a browser, or the OpenAPI schema over HTTP, and the headless browser."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from refinery.api.app import create_app
from refinery.api.tokens import Role, create_token
from refinery.settings import Settings
from refinery.store.db import migrate, session_factory
from tests.api.browser import CHROMIUM


@dataclass
class ApiEnv:
    settings: Settings
    sessions: sessionmaker[Session]
    tokens: dict[str, str]  # role -> secret

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def api_env(db_url, make_settings, topics) -> ApiEnv:
    settings = make_settings(database_url=db_url, api_max_body_bytes=65_536, **topics)
    migrate(db_url)
    sessions = session_factory(db_url)
    tokens = {}
    with sessions.begin() as session:
        for role in Role:
            _, secret = create_token(
                session, name=f"{role.value}-user", role=role, created_by="test"
            )
            tokens[role.value] = secret
    return ApiEnv(settings=settings, sessions=sessions, tokens=tokens)


@pytest.fixture
def client(api_env) -> Iterator[TestClient]:
    with TestClient(create_app(api_env.settings, sessions=api_env.sessions)) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving the app from a thread of this process, on a free port."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(api_env) -> Iterator[LiveServer]:
    with LiveServer(create_app(api_env.settings, sessions=api_env.sessions)) as server:
        yield server


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is needed: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()
