"""The reconciler: work the database says is due, re-enqueued when it has not progressed.

The queue (Redis) is a hint, not the record: a broker restarted empty, a worker killed with
messages reserved, a task that failed for good all lose messages. The database knows what is
still due, so a periodic pass (beat, and once at worker start) finds it and enqueues it again,
idempotently, counting attempts per item; after RECONCILE_MAX_ATTEMPTS an item is parked in the
failed-work table with the last error a task recorded for it (`refinery failed list|retry`).

Owns the failed_work table. May not touch: Kafka offsets, cluster or proposal contents (it only
sends the tasks that own them).
"""
