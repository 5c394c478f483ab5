"""The figures a reviewer reads about a proposal, derived once from its stored evidence.

Trend, growth, the emerging flag, size and region failure rate are what the cluster stage stored
(refinery.cluster.trends, refinery.cluster.region) and drafting copied into the evidence; nothing
here queries interactions again. The web UI, the JSON API and the CLI all render these objects,
so they show the same numbers, each with its time window stated. A merged proposal's figures are
its parts' figures and their sums.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from refinery.cluster.trends import growth
from schemas.proposals import Evidence, EvidenceExample, TrendBucket

# A growth of a fifth or less either way is noise at these counts.
FLAT_BAND = 0.2
# Longer text is shown folded: a preview, the rest behind "show more".
FOLD_CHARS = 280
FOLD_LINES = 4


class TrendFigures(BaseModel):
    bucket_s: float = Field(description="Width of a bucket in seconds.")
    bucket: str = Field(description="The bucket in words: day, hour, or N-second bucket.")
    counts: list[int] = Field(description="Failing interactions per bucket, oldest first.")
    window_start: datetime = Field(description="Start of the oldest bucket (UTC).")
    window_end: datetime = Field(description="End of the newest bucket (UTC); it is still filling.")
    total: int = Field(description="Failing interactions in the window (the sum of counts).")
    current: int = Field(description="In the newest bucket, still filling.")
    baseline_buckets: int = Field(description="Buckets before the newest that form the baseline.")
    baseline_mean: float = Field(description="Mean count of the baseline buckets.")
    growth_rate: float = Field(
        description="(current - baseline_mean) / max(baseline_mean, 1), as the cluster stage"
        " stored it; for a merged proposal, of the summed trend."
    )
    direction: Literal["rising", "falling", "flat"] = Field(
        description=f"From growth_rate: beyond ±{FLAT_BAND:.0%} rising or falling, else flat."
    )
    emerging: bool
    emerging_reason: Literal["new", "rising"] | None = None
    summary: str = Field(description="The figures in one sentence, as every view prints them.")


class PartFigures(BaseModel):
    cluster_id: str
    label: str
    size: int
    region_failure_rate: float | None = None
    trend: TrendFigures | None = Field(None, description="None when none was stored.")


class FeedbackChip(BaseModel):
    kind: str
    value: float | None = None
    count: int = Field(description="How often this feedback came on the interaction.")


class ExampleFigures(BaseModel):
    interaction_id: str
    feedback: list[FeedbackChip] = Field(description="Each kind (and value) once, with a count.")
    feedback_texts: list[str] = Field(description="Distinct feedback comments, in order.")
    reasons: list[str] = Field(
        description="Failure reasons not already shown as a feedback chip, each once."
    )


class EvidenceFigures(BaseModel):
    size: int = Field(description="Failing interactions in the proposal (the parts' sum).")
    trend: TrendFigures | None = None
    region_failure_rate: float | None = Field(
        None, description="Stored region failure rate; for a merged proposal see each part."
    )
    parts: list[PartFigures] = Field(default_factory=list)
    examples: list[ExampleFigures] = Field(default_factory=list)


def bucket_name(bucket_s: float) -> tuple[str, str]:
    """(singular, plural) of a bucket of this width."""
    if bucket_s == 86400:
        return "day", "days"
    if bucket_s == 3600:
        return "hour", "hours"
    return f"{bucket_s:g}-second bucket", f"{bucket_s:g}-second buckets"


def direction_of(growth_rate: float) -> Literal["rising", "falling", "flat"]:
    if growth_rate > FLAT_BAND:
        return "rising"
    if growth_rate < -FLAT_BAND:
        return "falling"
    return "flat"


def trend_figures(
    buckets: list[TrendBucket],
    *,
    bucket_s: float | None,
    baseline_buckets: int,
    growth_rate: float | None,
    emerging: bool,
    emerging_reason: Literal["new", "rising"] | None,
) -> TrendFigures | None:
    """The figures of one stored trend; `growth_rate` None recomputes it from the buckets by the
    cluster stage's rule (refinery.cluster.trends.growth)."""
    if not buckets or not bucket_s:
        return None
    counts = [b.count for b in buckets]
    baseline = counts[max(0, len(counts) - 1 - baseline_buckets) : -1]
    mean = sum(baseline) / len(baseline) if baseline else 0.0
    rate = growth_rate if growth_rate is not None else round(growth(counts[-1], baseline), 2)
    one, many = bucket_name(bucket_s)
    start = buckets[0].start
    end = buckets[-1].start + timedelta(seconds=bucket_s)
    direction = direction_of(rate)
    summary = (
        f"{sum(counts)} failing in the last {len(counts)} {many} "
        f"({start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC); this {one} (still filling): "
        f"{counts[-1]}, against a mean of {mean:.1f} per {one} over the {len(baseline)} before: "
        f"growth {rate:+.0%}, {direction}"
    )
    if emerging:
        summary += f"; emerging ({emerging_reason or 'rising'})"
    return TrendFigures(
        bucket_s=bucket_s,
        bucket=one,
        counts=counts,
        window_start=start,
        window_end=end,
        total=sum(counts),
        current=counts[-1],
        baseline_buckets=len(baseline),
        baseline_mean=round(mean, 2),
        growth_rate=rate,
        direction=direction,
        emerging=emerging,
        emerging_reason=emerging_reason,
        summary=summary + ".",
    )


def _summed(parts_trends: list[list[TrendBucket]]) -> list[TrendBucket]:
    total: Counter[datetime] = Counter()
    for trend in parts_trends:
        for bucket in trend:
            total[bucket.start] += bucket.count
    return [TrendBucket(start=start, count=n) for start, n in sorted(total.items())]


def example_figures(example: EvidenceExample) -> ExampleFigures:
    chips: Counter[tuple[str, float | None]] = Counter()
    texts: list[str] = []
    for f in example.feedback:
        chips[(f.kind, f.value)] += 1
        if f.text and f.text not in texts:
            texts.append(f.text)
    kinds = {kind for kind, _ in chips}
    reasons = [r for r in dict.fromkeys(example.failure_reasons) if r not in kinds]
    return ExampleFigures(
        interaction_id=example.interaction_id,
        feedback=[FeedbackChip(kind=k, value=v, count=n) for (k, v), n in chips.items()],
        feedback_texts=texts,
        reasons=reasons,
    )


def evidence_figures(evidence: Evidence, *, default_baseline_buckets: int) -> EvidenceFigures:
    """Everything a view prints about the evidence. `default_baseline_buckets` stands in for
    evidence drafted before it recorded its own (TREND_BASELINE_BUCKETS)."""
    baseline = evidence.trend_baseline_buckets or default_baseline_buckets
    bucket_s = evidence.trend_bucket_s
    merged = len(evidence.parts) > 1
    parts = [
        PartFigures(
            cluster_id=p.cluster_id,
            label=p.label,
            size=p.size,
            region_failure_rate=p.region_failure_rate,
            trend=trend_figures(
                p.trend,
                bucket_s=bucket_s,
                baseline_buckets=baseline,
                growth_rate=p.growth_rate,
                emerging=p.emerging,
                emerging_reason=p.emerging_reason,
            ),
        )
        for p in evidence.parts
    ]
    if merged and all(p.trend for p in evidence.parts):
        # The whole is the sum of its parts, whatever the anchor's own figures were.
        trend = trend_figures(
            _summed([p.trend for p in evidence.parts]),
            bucket_s=bucket_s,
            baseline_buckets=baseline,
            growth_rate=None,
            emerging=any(p.emerging for p in evidence.parts),
            emerging_reason=next(
                (r for r in ("new", "rising") if r in {p.emerging_reason for p in evidence.parts}),
                None,
            ),
        )
    elif merged:
        trend = None  # drafted before parts kept their trends: no whole to show
    else:
        trend = trend_figures(
            evidence.trend,
            bucket_s=bucket_s,
            baseline_buckets=baseline,
            growth_rate=evidence.growth_rate,
            emerging=evidence.emerging,
            emerging_reason=evidence.emerging_reason,
        )
    return EvidenceFigures(
        size=sum(p.size for p in evidence.parts) if merged else evidence.size,
        trend=trend,
        region_failure_rate=None if merged else evidence.region_failure_rate,
        parts=parts,
        examples=[example_figures(e) for e in evidence.examples],
    )


class Folded(BaseModel):
    preview: str
    folded: bool
    chars: int


def fold(text: str, *, chars: int = FOLD_CHARS, lines: int = FOLD_LINES) -> Folded:
    """A preview of `text` when it is longer than `chars` characters or `lines` lines: cut at a
    word boundary, marked with an ellipsis; the caller shows the rest on demand."""
    kept = text.split("\n")
    if len(text) <= chars and len(kept) <= lines:
        return Folded(preview=text, folded=False, chars=len(text))
    preview = "\n".join(kept[:lines])
    if len(preview) > chars:
        cut = preview[:chars]
        space = cut.rfind(" ")
        preview = cut[:space] if space > chars // 2 else cut
    return Folded(preview=preview.rstrip() + " …", folded=True, chars=len(text))
