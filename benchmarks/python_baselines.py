"""Pure-Python baselines that the benchmarks measure driftgate against, in the same run."""

import threading
import time
from collections import OrderedDict


class PyRollingWindow:
    """The seeds' ring-buffer window, ported to Python: a head bucket advanced by elapsed
    steps, all under locks."""

    def __init__(self, bucket_count: int, step: float, now=time.monotonic):
        self._lock = threading.Lock()
        self._now = now
        self._totals = [0] * bucket_count
        self._drifts = [0] * bucket_count
        self._head = 0
        self._step = step
        self._last_advance = now()

    def _advance_if_needed(self) -> None:
        while self._now() - self._last_advance >= self._step:
            self._last_advance += self._step
            self._head = (self._head + 1) % len(self._totals)
            self._totals[self._head] = 0
            self._drifts[self._head] = 0

    def record(self, is_drift: bool) -> None:
        with self._lock:
            self._advance_if_needed()
            self._totals[self._head] += 1
            if is_drift:
                self._drifts[self._head] += 1

    def ratio(self) -> float:
        with self._lock:
            self._advance_if_needed()
            total = sum(self._totals)
            return sum(self._drifts) / total if total else 0.0


class PyDriftTracker:
    """The seeds' tracker, ported: three global windows and a lazily created window per
    policy, the map guarded by a lock."""

    def __init__(self):
        self.w5m = PyRollingWindow(60, 5.0)
        self.w15m = PyRollingWindow(60, 15.0)
        self.w60m = PyRollingWindow(60, 60.0)
        self._per_policy: dict[str, PyRollingWindow] = {}
        self._lock = threading.Lock()

    def record(self, policy_id: str, shadow, enforced) -> bool:
        is_drift = shadow != enforced
        self.w5m.record(is_drift)
        self.w15m.record(is_drift)
        self.w60m.record(is_drift)
        with self._lock:
            window = self._per_policy.get(policy_id)
            if window is None:
                window = self._per_policy[policy_id] = PyRollingWindow(60, 5.0)
        window.record(is_drift)
        return is_drift


class OrderedDictLRU:
    """The usual Python LRU: an OrderedDict moved to the end on every hit."""

    def __init__(self, capacity: int = 5000):
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def is_new(self, signature: str) -> bool:
        if signature in self._seen:
            self._seen.move_to_end(signature)
            return False
        self._seen[signature] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


class CachetoolsLRU:
    """The same question asked of cachetools.LRUCache."""

    def __init__(self, capacity: int = 5000):
        import cachetools

        self._cache = cachetools.LRUCache(maxsize=capacity)

    def is_new(self, signature: str) -> bool:
        if signature in self._cache:
            self._cache[signature]
            return False
        self._cache[signature] = True
        return True
