"""SegmentCache: bounded, misses and hits remembered for the refresh job, idle users evicted first."""

from __future__ import annotations

from otel_segments.cache import SegmentCache


def test_misses_are_wanted_once_and_bounded() -> None:
    cache = SegmentCache(maxsize=2)
    for user_id in ("a", "b", "c", "a"):
        assert cache.get(user_id) is None
    wanted = cache.wanted()
    assert len(wanted) == 2 and set(wanted) <= {"a", "b", "c"}  # at most maxsize misses are remembered
    assert cache.wanted() == []  # taken once


def test_reload_in_wanted_order_evicts_the_idle_user_first() -> None:
    cache = SegmentCache(maxsize=3)
    for user_id in ("a", "b", "c"):
        cache.put(user_id, {"engagement_level": "low"})
    assert cache.get("a") == {"app.user.engagement_level": "low"}  # a is in use, b and c are idle
    assert cache.get("d") is None  # a new user shows up
    wanted = cache.wanted()
    assert wanted == ["b", "c", "a", "d"]
    for user_id in wanted:  # what the refresh job does with the stored segments
        cache.put(user_id, {"engagement_level": "high"})
    assert len(cache) == 3
    assert cache.get("b") is None  # the least recently used went out, not the one spans asked for
    assert cache.get("a") == cache.get("d") == {"app.user.engagement_level": "high"}


def test_no_segment_is_remembered_as_empty_and_not_wanted_as_a_miss_again() -> None:
    cache = SegmentCache(maxsize=5)
    assert cache.get("ghost") is None
    cache.put("ghost", {})
    assert cache.get("ghost") == {}
    assert cache.wanted() == ["ghost"]  # reloaded like any cached user, but not a miss
