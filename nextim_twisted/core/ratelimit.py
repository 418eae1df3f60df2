"""Per-user token buckets for messages and presence changes (docs/design.md#d15-limits). No I/O."""
from ..errors import RateLimited


class RateLimiter:
    """Token buckets keyed by ``(kind, user_id)``.

    :param clock: ``IReactorTime``.
    :param per_minute: ``{kind: allowed events per minute}``; the burst is a quarter
        of that (at least 5), refilled continuously.
    """

    def __init__(self, clock, per_minute):
        self.clock = clock
        self.per_minute = per_minute
        self.buckets = {}  # (kind, user_id) -> [tokens, last time s]

    def check(self, kind, user_id):
        """Take one token.

        :raises RateLimited: with ``retry_after_s`` when the bucket is empty (429).
        """
        rate = self.per_minute[kind] / 60.0
        burst = max(5.0, self.per_minute[kind] / 4.0)
        now = self.clock.seconds()
        tokens, last = self.buckets.get((kind, user_id), (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self.buckets[(kind, user_id)] = (tokens, now)
            raise RateLimited(f"too many {kind}: slow down", (1.0 - tokens) / rate)
        self.buckets[(kind, user_id)] = (tokens - 1.0, now)
        if len(self.buckets) > 100000:
            self._prune(now)

    def _prune(self, now):
        # Full buckets carry no information: forget them to bound memory.
        for key, (tokens, last) in list(self.buckets.items()):
            kind = key[0]
            burst = max(5.0, self.per_minute[kind] / 4.0)
            if tokens + (now - last) * self.per_minute[kind] / 60.0 >= burst:
                del self.buckets[key]
