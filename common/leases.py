"""What a worker holds in Redis for a while (document locks, batch leases, write turns, writer entries), as
the worker itself knows it: when Redis last confirmed each hold, and whether Redis said it is gone.

Why the holder must know: a hold is a key with a TTL that the heartbeat extends. Redis away for longer than
the TTL (killed, restarted, partitioned) lets every hold expire while its holder runs on, unaware; another
worker then takes the same documents and both write them at once. Measured on the chaos stack with 8-12 s
Redis outages against the fault settings' 8 s TTL: a document ended with chunks 0, 4 and 5 of its six (a
prune of one job ran between the upserts of another), and a later upload of the same content was skipped
as "already stored".

So every write request to Milvus first asks whether all holds of its process still stand (`check_holds`): none
that Redis said is gone (an extension that found another holder or no key), and none confirmed longer ago
than `1 - WRITE_BUDGET` of its TTL. A request sent under a hold confirmed that recently has at least a
quarter of the TTL to finish before another worker could take the hold. A hold that lapsed fails the
task with `HoldLapsed`, which is retried: the retry takes its holds again and plans its writes afresh (the
write it cut short left its documents marked, so whoever writes them next prunes the stray rows).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.errors import ServiceUnavailable

WRITE_BUDGET = 0.25  # of a hold's TTL, left for a write request sent under it


class HoldLapsed(ServiceUnavailable):
    """A hold of this worker expired or was taken over while it worked (Redis away longer than its TTL)."""


@dataclass
class Hold:
    """One hold of this process: what it is (for the error), its TTL, and when Redis last confirmed it."""

    what: str
    ttl_s: float
    confirmed: float = field(default_factory=time.monotonic)  # read before the command that confirmed it
    gone: bool = False  # Redis answered that the key is no longer this holder's

    def renewed(self, sent_at: float, held: bool) -> None:
        """Record a renewal sent at `sent_at` (monotonic) and its answer."""
        if held:
            self.confirmed = max(self.confirmed, sent_at)
        else:
            self.gone = True

    def lapsed(self, now: float) -> bool:
        return self.gone or now - self.confirmed > self.ttl_s * (1 - WRITE_BUDGET)


def check_holds(holds: Iterable[Hold]) -> None:
    """Raise HoldLapsed unless every hold stands with time left for a write."""
    now = time.monotonic()
    for hold in holds:
        if hold.lapsed(now):
            age = now - hold.confirmed
            why = "was taken over or expired" if hold.gone else f"was last confirmed {age:.1f} s ago"
            raise HoldLapsed(
                f"this worker's {hold.what} {why} (TTL {hold.ttl_s:g} s: was Redis unreachable that long?); "
                "it stopped writing, so that two workers never write the same documents at once"
            )
