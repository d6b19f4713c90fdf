"""The runtime's one LRU: bounded by total cost, oldest first, evicted values handed back."""

from __future__ import annotations

from mixtera.runtime.lru import LRU


def test_the_least_recently_used_go_first_and_are_handed_to_evict() -> None:
    dropped: list[str] = []
    cache: LRU[int, str] = LRU(2, evict=dropped.append)
    cache.put(1, "a")
    cache.put(2, "b")
    assert cache.get(1) == "a"  # 1 is now the most recent
    cache.put(3, "c")
    assert dropped == ["b"] and cache.get(2) is None and len(cache) == 2
    cache.clear()
    assert sorted(dropped) == ["a", "b", "c"] and len(cache) == 0


def test_the_limit_is_on_the_total_cost_and_the_newest_always_stays() -> None:
    cache: LRU[str, bytes] = LRU(10, cost=len)
    cache.put("x", b"12345")
    cache.put("y", b"123456")  # 11 > 10: x goes
    assert cache.get("x") is None and cache.get("y") == b"123456"
    cache.put("z", b"0" * 50)  # larger than the limit alone: kept, everything older goes
    assert cache.get("y") is None and cache.get("z") == b"0" * 50 and len(cache) == 1
