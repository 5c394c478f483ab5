"""Operations: the metrics registry, the health/metrics HTTP endpoint of each long-running role,
and the generator of docs/configuration.md.

Owns nothing of the pipeline; pipeline stages import `refinery.ops.metrics` to count, and the
role entry points (refinery/cli.py) start `refinery.ops.health.serve_health`.
"""
