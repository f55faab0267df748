"""Wrong API keys, counted per client address, to slow down guessing.

After ``limit`` wrong keys from one address within ``window_s`` seconds, every request from that address that
carries a key is answered 429 (with ``Retry-After``) without the key being looked at, until the oldest of those
failures is ``window_s`` old; a right key afterwards clears the address's count. Requests without a key are not
counted (they get 401 as before). The table is bounded (the least recently failed addresses are forgotten first),
so a flood of addresses cannot grow it without limit. Only the event loop's thread touches it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_ADDRESSES = 10_000


class KeyFailures:
    def __init__(self, limit: int = 10, window_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str | None) -> int | None:
        """Seconds until ``address`` may try a key again, or None if it may now."""
        times = self._recent(address)
        if times is None or len(times) < self.limit:
            return None
        return max(1, math.ceil(times[0] + self.window_s - self.clock()))

    def failed(self, address: str | None) -> None:
        if address is None or self.limit <= 0:
            return
        times = self._failures.pop(address, None) or deque(maxlen=self.limit)
        times.append(self.clock())
        self._failures[address] = times  # most recent last
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str | None) -> None:
        if address is not None:
            self._failures.pop(address, None)

    def _recent(self, address: str | None) -> deque[float] | None:
        if address is None or self.limit <= 0:
            return None
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= self.clock() - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times
