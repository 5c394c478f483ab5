"""Labelled intent sets for the clustering benchmark, built from their public sources on disk.

    python bench/datasets.py [--clinc PATH] [--hwu64 REPO] [--snips REPO] [--out var/datasets]

Every set becomes the same form: the queries of a standard test split as a JSON list of
[text, intent] pairs, cached under var/datasets/ (gitignored). No sentence of any set is committed
to this repository: the script reads the sources where they were fetched.

- clinc150: CLINC150 `data_full.json`, the "test" split, in-scope intents only (150 intents x 30
  = 4,500 queries; the "oos" queries are left out, they are no intent).
- hwu64: HWU64 (xliuhw/NLU-Evaluation-Data), the test set of fold 1 of the authors'
  cross-validation (CrossValidation/autoGeneFromRealAnno/.../KFold_1/testset/annotated/*): 64
  intents, 1,076 queries. This is the split later work uses as the HWU64 test set (the same
  size as the test split of Casanueva et al. 2020 / DialoGLUE).
- snips: SNIPS (sonos/nlu-benchmark), 2017-06-custom-intent-engines/<Intent>/validate_<Intent>.json:
  7 intents x 100 = 700 queries, the benchmark's held-out validation set (its only test split).

A repository argument may be a bare git directory (as `fetch` leaves it: read with `git show
HEAD:path`) or an ordinary checkout. Defaults: the mirror paths below, or the environment
variables REFINERY_CLINC150, REFINERY_HWU64_REPO, REFINERY_SNIPS_REPO.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "var" / "datasets"

DEFAULT_PATHS = {
    "clinc150": os.environ.get(
        "REFINERY_CLINC150", str(ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json")
    ),
    "hwu64": os.environ.get("REFINERY_HWU64_REPO", "/work/.mirror/xliuhw+NLU-Evaluation-Data/repo"),
    "snips": os.environ.get("REFINERY_SNIPS_REPO", "/work/.mirror/sonos+nlu-benchmark/repo"),
}

HWU64_TEST = (
    "CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation/"
    "KFold_1/testset/annotated/"
)
SNIPS_DIR = "2017-06-custom-intent-engines/"

Example = tuple[str, str]


class _Repo:
    """Read files of a git repository: a checkout (plain files) or a bare git directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.bare = not (self.path / ".git").exists() and (self.path / "HEAD").exists()
        if not self.path.exists():
            raise FileNotFoundError(f"no repository at {self.path}")

    def files(self, prefix: str) -> list[str]:
        if not self.bare:
            base = self.path / prefix
            return sorted(str(p.relative_to(self.path)) for p in base.rglob("*") if p.is_file())
        out = self._git("ls-tree", "-r", "--name-only", "HEAD", "--", prefix)
        return sorted(line for line in out.splitlines() if line)

    def read(self, path: str) -> str:
        if not self.bare:
            return (self.path / path).read_text(encoding="utf-8")
        return self._git("show", f"HEAD:{path}")

    def _git(self, *args: str) -> str:
        return subprocess.run(
            ["git", f"--git-dir={self.path}", *args],
            check=True,
            capture_output=True,
            text=True,
            encoding="utf-8",
        ).stdout


def build_clinc150(path: str | Path) -> list[Example]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(text, intent) for text, intent in data["test"]]


def build_hwu64(repo_path: str | Path) -> list[Example]:
    repo = _Repo(repo_path)
    out: list[Example] = []
    for name in repo.files(HWU64_TEST):
        if not name.endswith(".json"):
            continue
        for item in json.loads(repo.read(name))["test_data_annotation"]:
            out.append((item["text"], item["intent"]))
    return out


def build_snips(repo_path: str | Path) -> list[Example]:
    repo = _Repo(repo_path)
    out: list[Example] = []
    for name in repo.files(SNIPS_DIR):
        if not Path(name).name.startswith("validate_"):
            continue
        # Each query is a list of text chunks
        # (entities are chunks with an "entity" key), joined back into the sentence.
        for intent, queries in json.loads(repo.read(name)).items():
            for query in queries:
                text = "".join(chunk["text"] for chunk in query["data"]).strip()
                out.append((text, intent))
    return out


BUILDERS: dict[str, Callable[[str | Path], list[Example]]] = {
    "clinc150": build_clinc150,
    "hwu64": build_hwu64,
    "snips": build_snips,
}


def load(name: str, source: str | Path | None = None, cache_dir: Path = CACHE_DIR) -> list[Example]:
    """The test split of set `name` as (text, intent) pairs; built once, then read from cache."""
    cached = cache_dir / f"{name}-test.json"
    if cached.exists():
        return [(t, i) for t, i in json.loads(cached.read_text(encoding="utf-8"))]
    examples = BUILDERS[name](source or DEFAULT_PATHS[name])
    if not examples:
        raise ValueError(f"{name}: no examples found in {source or DEFAULT_PATHS[name]}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    return examples


def load_available(
    sources: dict[str, str | Path | None] | None = None, cache_dir: Path = CACHE_DIR
) -> dict[str, list[Example]]:
    """Every set whose source (or cache) is on disk; the others are skipped with a note."""
    sources = sources or {}
    out: dict[str, list[Example]] = {}
    for name in BUILDERS:
        try:
            out[name] = load(name, sources.get(name), cache_dir)
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            print(f"{name}: skipped, source not available ({exc})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clinc", default=DEFAULT_PATHS["clinc150"], help="CLINC150 data_full.json"
    )
    parser.add_argument("--hwu64", default=DEFAULT_PATHS["hwu64"], help="NLU-Evaluation-Data repo")
    parser.add_argument("--snips", default=DEFAULT_PATHS["snips"], help="nlu-benchmark repo")
    parser.add_argument("--out", type=Path, default=CACHE_DIR, help="cache directory")
    args = parser.parse_args()
    sets = load_available(
        {"clinc150": args.clinc, "hwu64": args.hwu64, "snips": args.snips}, args.out
    )
    for name, examples in sets.items():
        print(f"{name}: {len(examples)} queries, {len({i for _, i in examples})} intents")


if __name__ == "__main__":
    main()
