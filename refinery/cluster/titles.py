"""Optional short cluster titles from an OpenAI-compatible chat endpoint (CLUSTER_TITLE_ENDPOINT).

Off by default and never required: keywords and representative queries are the label; a title is
a convenience for reviewers. Any failure (network, status, malformed reply) gives no title and a
warning, never an error in the re-cluster. The queries sent are the stored ones, already redacted;
the reply is untrusted text, cut to one short line, and escaped wherever it is shown.
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

from refinery.settings import Settings

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 80

SYSTEM_PROMPT = (
    "You name groups of user queries that an AI assistant answered badly. Reply with a title of"
    " at most eight words that says what the users asked about. Reply with the title only."
)


class Titler(Protocol):
    def __call__(self, keywords: list[str], queries: list[str]) -> str | None: ...


class ChatTitler:
    """POSTs /chat/completions once per cluster; returns the cleaned title or None."""

    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        assert settings.cluster_title_endpoint, "CLUSTER_TITLE_ENDPOINT is unset"
        self._url = settings.cluster_title_endpoint.rstrip("/") + "/chat/completions"
        self._model = settings.cluster_title_model
        headers = {}
        if settings.cluster_title_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.cluster_title_api_key.get_secret_value()}"
        self._client = client or httpx.Client(
            timeout=settings.cluster_title_timeout_s, headers=headers
        )

    def __call__(self, keywords: list[str], queries: list[str]) -> str | None:
        user = "Keywords: " + ", ".join(keywords) + "\nQueries:\n" + "\n".join(
            f"- {q[:300]}" for q in queries
        )
        body = {
            "model": self._model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ],
            "temperature": 0,
            "max_tokens": 24,
        }
        try:
            response = self._client.post(self._url, json=body)
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("cluster title request failed: %s: %s", type(exc).__name__, exc)
            return None
        return clean_title(content) if isinstance(content, str) else None

    def close(self) -> None:
        self._client.close()


def clean_title(text: str) -> str | None:
    """First non-empty line, quotes and a trailing period stripped, at most MAX_TITLE_CHARS."""
    for line in text.splitlines():
        line = " ".join(line.split()).strip("\"'`*# ").rstrip(".")
        if line:
            return line[:MAX_TITLE_CHARS]
    return None


def make_titler(settings: Settings) -> ChatTitler | None:
    return ChatTitler(settings) if settings.cluster_title_endpoint else None
