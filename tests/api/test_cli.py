"""`refinery tokens create|list|revoke` and `refinery review edit|applied`, in-process, on SQLite
and PostgreSQL: the same service layer as the API, so the same rules and audit trail. Commands
that only read never migrate the schema."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from refinery.api.tokens import authenticate
from refinery.cli import build_parser, main
from refinery.settings import get_settings
from refinery.store.db import engine_for
from refinery.store.models import ProposalRow
from tests.api.helpers import BASE_PROMPT, audit_trail, insert_proposal


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
    assert audit_trail(api_env.sessions, pid) == [
        ("system:proposer", "create", "ok"),
        ("erin", "edit", "ok"),
        ("cli", "edit", "refused"),
        ("cli", "applied", "refused"),
        ("erin", "approve", "ok"),
        ("deployer", "applied", "ok"),
    ]


def test_review_approve_many_decides_each_on_its_own(api_env, cli):
    first, taken, last = (insert_proposal(api_env.sessions, kind) for kind in (
        "rag_source", "system_prompt_edit", "fine_tune_dataset"))  # fmt: skip
    assert cli("review", "reject", taken, "--actor", "erin")[0] == 0

    code, out, err = cli("review", "approve", first, taken, last, "p_missing", "--actor", "dana")
    # The worst single-decision code: not found (4) over refused (3); the others are approved.
    assert code == 4
    assert f"{first}: approved (version 2) by dana" in out
    assert f"{last}: approved (version 2) by dana" in out
    assert f"{taken}: conflict" in err and "rejected" in err and "p_missing: not_found" in err
    with api_env.sessions() as s:
        statuses = {pid: s.get(ProposalRow, pid).status for pid in (first, taken, last)}
    assert statuses == {first: "approved", taken: "rejected", last: "approved"}
    assert audit_trail(api_env.sessions, taken)[-1] == ("dana", "approve", "refused")

    code, _, err = cli("review", "reject", first, last, "--version", "2")
    assert code == 2 and "give one id" in err  # a version names one proposal


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


def test_only_edit_takes_artifact_flags():
    parser = build_parser()
    args = parser.parse_args(["review", "edit", "p_1", "--version", "1", "--topic", "warranty"])
    assert args.topic == "warranty"
    for name in ("approve", "reject", "applied"):
        with pytest.raises(SystemExit):
            parser.parse_args(["review", name, "p_1", "--topic", "warranty"])


READ_ONLY = [
    ("review", "list"),
    ("review", "show", "p_1"),
    ("review", "export", "p_1", "--out", "unused"),
    ("tokens", "list"),
    ("prompts", "show", "nimbus-support"),
    ("failed", "list"),
    ("corpus", "list", "nimbus-support"),
]


def test_read_only_commands_never_migrate(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        for argv in READ_ONLY:
            assert main(list(argv)) == 1, argv
            err = capsys.readouterr().err
            assert "no migration" in err and "run `refinery migrate` first" in err, argv
        assert inspect(engine_for(url)).get_table_names() == []  # nothing created
        assert main(["migrate"]) == 0
        assert main(["review", "list"]) == 0
        assert "(0 of 0)" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
