"""Which clusters a re-cluster merged, split, created or retired: a pure function of member flows.

A flow old -> new is the number of members an old cluster (as assigned before the run) has in a
new one. It is significant when it holds at least `min_share` of the old cluster's members (those
in this run's window), so a few strays moving never read as a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LineageEvent:
    kind: str  # merge | split | new | retired
    from_ids: list[str]
    to_ids: list[str]
    detail: dict[str, int] = field(default_factory=dict)  # "old->new": shared members


def lineage(
    flows: dict[tuple[str, str], int],
    old_sizes: dict[str, int],
    old_ids: set[str],
    new_ids: list[str],
    min_share: float,
) -> list[LineageEvent]:
    """Events, in a deterministic order, for one run.

    `old_ids`: the clusters active before the run; `new_ids`: those active after it (ids kept or
    created); `old_sizes`: members of each old cluster this run saw.
    - merge: a new cluster with significant flows from two or more old ones (from: those, to: it);
    - split: an old cluster with significant flows to two or more new ones (from: it, to: those);
    - new: an id that was not active before and is not covered by a merge or split (from: its one
      significant source, if any: the same topic drifted too far to keep its id);
    - retired: an old id no longer active (to: where its members went, if significantly anywhere).
    """
    significant: dict[tuple[str, str], int] = {
        (old, new): n
        for (old, new), n in flows.items()
        if n > 0 and old in old_ids and n >= min_share * max(old_sizes.get(old, 0), 1)
    }
    sources: dict[str, list[str]] = {}
    targets: dict[str, list[str]] = {}
    for old, new in sorted(significant):
        sources.setdefault(new, []).append(old)
        targets.setdefault(old, []).append(new)

    def detail(pairs: list[tuple[str, str]]) -> dict[str, int]:
        return {f"{o}->{n}": significant[(o, n)] for o, n in pairs}

    events: list[LineageEvent] = []
    covered: set[str] = set()
    for new in sorted(new_ids):
        olds = sources.get(new, [])
        if len(olds) >= 2:
            events.append(LineageEvent("merge", olds, [new], detail([(o, new) for o in olds])))
            covered.add(new)
    for old in sorted(targets):
        news = targets[old]
        if len(news) >= 2:
            events.append(LineageEvent("split", [old], news, detail([(old, n) for n in news])))
            covered.update(news)
    for new in sorted(new_ids):
        if new in old_ids or new in covered:
            continue
        olds = sources.get(new, [])
        events.append(LineageEvent("new", olds, [new], detail([(o, new) for o in olds])))
    active_after = set(new_ids)
    for old in sorted(old_ids - active_after):
        news = targets.get(old, [])
        events.append(LineageEvent("retired", [old], news, detail([(old, n) for n in news])))
    return events
