"""The browser side of the UI tests (headless Debian `chromium`, driven by Playwright; the
`browser` fixture is in conftest.py): logging in with a token, and screenshots that
UPDATE_SCREENSHOTS=1 also writes to docs/img."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def login(page, server, token: str) -> None:
    page.goto(f"{server.url}/ui/")
    assert page.url.endswith("/ui/login")  # no cookie: sent to log in
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/ui/")


def screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / name)
