"""`refinery tokens create|list|revoke` and `refinery review edit|applied`, in-process, on SQLite
and PostgreSQL: the same service layer as the API, so the same rules and audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from refinery.api.tokens import authenticate
from refinery.cli import main
from refinery.settings import get_settings
from refinery.store.models import AuditEntry, ProposalRow
from tests.api.helpers import BASE_PROMPT, insert_proposal


@pytest.fixture
def cli(api_env, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", api_env.settings.database_url)
    monkeypatch.setenv("TOPIC_APPROVED", api_env.settings.topic_approved)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    get_settings.cache_clear()


def test_tokens_create_prints_the_secret_once(api_env, cli):
    code, out, err = cli("tokens", "create", "--role", "reviewer", "--name", "dana")
    secret = out.strip()
    assert code == 0 and secret.startswith("rfy_") and secret not in err
    with api_env.sessions() as s:
        principal = authenticate(s, secret)
    assert principal is not None and (principal.name, principal.role) == ("dana", "reviewer")
    code, out, _ = cli("tokens", "list")
    assert code == 0 and "dana" in out and secret not in out
    assert cli("tokens", "revoke", principal.token_id)[0] == 0
    with api_env.sessions() as s:
        assert authenticate(s, secret) is None
    assert cli("tokens", "create", "--role", "viewer", "--name", "<bad>")[0] == 2
    with pytest.raises(SystemExit):
        cli("tokens", "create", "--role", "root", "--name", "eve")


def test_review_edit_approve_applied(api_env, cli, tmp_path):
    pid = insert_proposal(api_env.sessions, "system_prompt_edit")
    new_prompt = tmp_path / "prompt.txt"
    new_prompt.write_text(BASE_PROMPT + "\nBe brief.\n")

    code, out, err = cli(
        "review",
        "edit",
        pid,
        "--version",
        "1",
        "--proposed-text-file",
        str(new_prompt),
        "--comment",
        "shorter",
        "--actor",
        "erin",
    )
    assert code == 0, err
    assert "pending (version 2)" in out
    # The wrong kind of field, or a stale version, is refused without a change.
    assert cli("review", "edit", pid, "--version", "2", "--topic", "x")[0] == 2
    assert (
        cli("review", "edit", pid, "--version", "1", "--proposed-text-file", str(new_prompt))[0]
        == 3
    )
    assert cli("review", "applied", pid)[0] == 3  # pending -> applied is not a transition
    assert cli("review", "approve", pid, "--version", "2", "--actor", "erin")[0] == 0
    code, out, _ = cli("review", "applied", pid, "--comment", "deploy 7", "--actor", "deployer")
    assert code == 0 and "applied (version 4)" in out
    assert cli("review", "applied", "p_missing")[0] == 4

    with api_env.sessions() as s:
        row = s.get(ProposalRow, pid)
        assert row.status == "applied" and row.payload["artifact"]["proposed_text"].endswith(
            "Be brief.\n"
        )
        audit = [
            (a.actor, a.action, a.outcome)
            for a in s.scalars(
                select(AuditEntry).where(AuditEntry.proposal_id == pid).order_by(AuditEntry.id)
            )
        ]
    assert audit == [
        ("system:proposer", "create", "ok"),
        ("erin", "edit", "ok"),
        ("cli", "edit", "refused"),
        ("cli", "applied", "refused"),
        ("erin", "approve", "ok"),
        ("deployer", "applied", "ok"),
    ]


def test_review_edit_rag_and_dataset(api_env, cli, tmp_path):
    rag = insert_proposal(api_env.sessions, "rag_source")
    code, _, err = cli(
        "review",
        "edit",
        rag,
        "--version",
        "1",
        "--topic",
        "warranty terms",
        "--must-cover",
        "Length of the warranty",
        "--must-cover",
        "What it covers",
    )
    assert code == 0, err
    ds = insert_proposal(api_env.sessions, "fine_tune_dataset")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    assert cli("review", "edit", ds, "--version", "1", "--rows-file", str(rows))[0] == 0
    rows.write_text('{"messages": "nope"}\n')
    assert cli("review", "edit", ds, "--version", "2", "--rows-file", str(rows))[0] == 2
    with api_env.sessions() as s:
        assert s.get(ProposalRow, rag).payload["artifact"]["must_cover"] == [
            "Length of the warranty",
            "What it covers",
        ]
        assert s.get(ProposalRow, ds).payload["artifact"]["rows"] == 1
