"""Failure-mode scenarios: plant known failures of a labelled query set among healthy traffic,
run them through the real roles, and score the review queue against what was planted.

`plant.py` turns labelled queries into interaction and feedback events (pure), `roles.py` runs
`refinery migrate | ingest | worker | beat` as processes, `score.py` reads the queue and the
clusters back and says which planted intents were found, how purely, of which kind, and how
long after the last event the queue was complete. `run.py` chains them (`refinery scenario`,
`bench/bench_scenario.py`). Owns no table; reads interactions, clusters and proposals.
"""
