"""`refinery relay`, with a pause for the crash test: with RELAY_TEST_PAUSE_ON_BATCH=n, the relay
stops, forever, right after Kafka acknowledged every record of its n-th batch and before it marks
them sent, and says so by appending a line to RELAY_TEST_ACKED_FILE. The test SIGKILLs it there.

The hook is the relay's own clock: relay_once reads `utcnow()` exactly once per batch, between the
acks and the marking. Without the variable this is the plain `refinery relay` command.
"""

from __future__ import annotations

import os
import sys
import time

from refinery.cli import main
from refinery.review import relay

pause_on = int(os.environ.get("RELAY_TEST_PAUSE_ON_BATCH", "0"))
if pause_on:
    real_utcnow = relay.utcnow
    batches = 0

    def utcnow_then_pause():  # type: ignore[no-untyped-def]
        global batches
        batches += 1
        if batches == pause_on:
            with open(os.environ["RELAY_TEST_ACKED_FILE"], "a") as f:
                f.write(f"acked batch {batches}\n")
            time.sleep(3600)
        return real_utcnow()

    relay.utcnow = utcnow_then_pause

sys.exit(main(["relay"]))
