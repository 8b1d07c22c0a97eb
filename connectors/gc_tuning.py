"""The garbage collector tuned for the shovel's processes.

Both the shovel and its parser helpers allocate a handful of short-lived objects per message,
tens of thousands a second, and hold ~150k long-lived ones from start-up (modules, schemas,
pika, pydantic). With CPython's defaults a young collection runs every 700 allocations and the
full collections that follow re-scan every start-up object: 5-9 us per message in the shovel's
main process (bench/bench_shovel.py, gc.callbacks timings), a fifth of its CPU.
"""

from __future__ import annotations

import gc

# Net allocations between young-generation collections (CPython's default: 700). Per-message
# objects die long before that; reference cycles still get collected, only later.
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_after_startup() -> None:
    """Once start-up is done: drop its garbage, keep what is left out of every later
    collection (``gc.freeze``), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
