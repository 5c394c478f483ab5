"""Optional short cluster titles from an OpenAI-compatible chat endpoint (CLUSTER_TITLE_ENDPOINT).

Off by default and never required: keywords and representative queries are the label; a title is
a convenience for reviewers. Any failure (network, status, malformed reply, a bug) gives no title,
never an error in the re-cluster: the re-cluster task uses `make_titler(settings, app_id)`, an
`OptionalTitler` that counts the failure once per run as an optional step (refinery.ops.optional),
stops asking for the rest of that run (an endpoint that is down would cost its timeout per cluster,
delaying the proposals), and leaves the clusters untitled, so the next re-cluster asks again.
The queries sent are the stored ones, already redacted; the reply is untrusted text, cut to one
short line, and escaped wherever it is shown.
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

from refinery.ops.optional import CLUSTER_TITLES, optional_step_failed
from refinery.settings import ClusterSettings

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

    def __init__(
        self,
        settings: ClusterSettings,
        client: httpx.Client | None = None,
        *,
        raise_errors: bool = False,
    ) -> None:
        """`raise_errors`: raise request failures (for OptionalTitler to count) instead of
        warning and returning None."""
        self._raise_errors = raise_errors
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
        user = (
            "Keywords: "
            + ", ".join(keywords)
            + "\nQueries:\n"
            + "\n".join(f"- {q[:300]}" for q in queries)
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
            if self._raise_errors:
                raise
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


class OptionalTitler:
    """A titler as an optional step of one app's re-cluster: the first failure is recorded (one
    log line with the app, one count) and the rest of the run goes untitled."""

    def __init__(self, inner: Titler, app_id: str) -> None:
        self._inner = inner
        self._app_id = app_id
        self.failed = False

    def __call__(self, keywords: list[str], queries: list[str]) -> str | None:
        if self.failed:
            return None
        try:
            return self._inner(keywords, queries)
        except Exception as error:  # noqa: BLE001 - titles are optional, whatever went wrong
            self.failed = True
            optional_step_failed(CLUSTER_TITLES, self._app_id, error)
            return None

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def make_titler(
    settings: ClusterSettings, app_id: str | None = None
) -> ChatTitler | OptionalTitler | None:
    """The titler of a re-cluster, None without CLUSTER_TITLE_ENDPOINT. With `app_id`, wrapped as
    that app's optional step (what the re-cluster task uses)."""
    if not settings.cluster_title_endpoint:
        return None
    if app_id is None:
        return ChatTitler(settings)
    return OptionalTitler(ChatTitler(settings, raise_errors=True), app_id)
