"""Settings: grouped per stage, composed into one object, read at call time only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from refinery.settings import Settings, SettingsGroup

ROOT = Path(__file__).resolve().parents[2]
# Celery reads its configuration from the app object, built at import by convention.
IMPORT_TIME_READERS = {"workers/celery_app.py"}


def test_every_setting_belongs_to_exactly_one_group() -> None:
    groups = [base for base in Settings.__bases__ if issubclass(base, SettingsGroup)]
    owners: dict[str, list[str]] = {}
    for group in groups:
        for name in group.model_fields:
            owners.setdefault(name, []).append(group.__name__)
    assert set(owners) == set(Settings.model_fields), "a field declared outside every group"
    assert {name: gs for name, gs in owners.items() if len(gs) > 1} == {}


def test_a_group_is_the_settings_it_declares() -> None:
    from refinery.settings import IngestSettings

    settings = Settings(_env_file=None, max_event_bytes=1024)
    assert isinstance(settings, IngestSettings)
    assert settings.max_event_bytes == 1024
    with pytest.raises(ValueError, match="frozen"):
        settings.max_event_bytes = 1


def _import_time_calls(tree: ast.Module) -> list[int]:
    """Lines where `get_settings()` or `Settings()` runs when the module is imported: at module
    or class level, in a decorator, a default argument or a class header."""
    found: list[int] = []

    def calls(node: ast.AST) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                func = sub.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in ("get_settings", "Settings"):
                    found.append(sub.lineno)

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in [*stmt.decorator_list, *stmt.args.defaults, *stmt.args.kw_defaults]:
                    if node is not None:
                        calls(node)
            elif isinstance(stmt, ast.ClassDef):
                for node in [*stmt.decorator_list, *stmt.bases, *stmt.keywords]:
                    calls(node)
                visit(stmt.body)
            else:
                calls(stmt)

    visit(tree.body)
    return found


def test_no_module_reads_settings_at_import_time() -> None:
    offenders = []
    for package in ("refinery", "workers", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in IMPORT_TIME_READERS:
                continue
            lines = _import_time_calls(ast.parse(path.read_text(), filename=rel))
            offenders += [f"{rel}:{line}" for line in lines]
    assert offenders == [], "read settings inside the function that needs them"


def test_the_import_time_check_finds_a_decorator_default() -> None:
    source = (
        "from refinery.settings import get_settings\n"
        "@task(max_retries=get_settings().task_retry_budget_s)\n"
        "def f(x=get_settings().enqueue_batch_size):\n"
        "    return get_settings()\n"
        "LIMIT = get_settings().max_event_bytes\n"
    )
    assert sorted(_import_time_calls(ast.parse(source))) == [2, 3, 5]
