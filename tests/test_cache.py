"""SegmentCache: bounded, misses and hits remembered for the refresh job, idle users evicted first."""

from __future__ import annotations

from otel_segments.spans.cache import SegmentCache


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


def test_a_person_key_leaves_out_itself_only_never_the_properties_after_it() -> None:
    from otel_segments.spans.cache import segment_attributes

    segment = {"engagement_level": "high", "email": "a@b.c", "plan": "pro", "nothing": None, "Full Name": "A", "tier": 3}
    assert segment_attributes(segment) == {"app.user.engagement_level": "high", "app.user.plan": "pro", "app.user.tier": 3}


def test_properties_outside_the_selection_leave_out_themselves_only() -> None:
    from otel_segments.spans.cache import segment_attributes

    segment = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert segment_attributes(segment, only={"b", "d"}) == {"app.user.b": 2, "app.user.d": 4}
    assert segment_attributes(segment, only=set()) == {}
    assert segment_attributes(segment, only=None) == {f"app.user.{k}": v for k, v in segment.items()}


def test_exactly_64_segment_properties_go_on_spans_without_a_warning(caplog) -> None:
    from otel_segments.spans.cache import MAX_SEGMENT_PROPERTIES, _warn_too_many, segment_attributes

    _warn_too_many.cache_clear()
    segment = {f"p{i:02}": i for i in range(MAX_SEGMENT_PROPERTIES)}
    assert MAX_SEGMENT_PROPERTIES == 64
    assert segment_attributes(segment) == {f"app.user.p{i:02}": i for i in range(64)}
    assert caplog.records == []


def test_past_64_the_first_64_stay_and_one_warning_says_so(caplog) -> None:
    import logging

    from otel_segments.spans.cache import _warn_too_many, segment_attributes

    caplog.set_level(logging.WARNING)
    _warn_too_many.cache_clear()
    # left-out values first: they do not count against the cap
    segment = {"email": "a@b.c", "none": None, **{f"p{i:02}": i for i in range(70)}}
    assert segment_attributes(segment) == {f"app.user.p{i:02}": i for i in range(64)}
    assert segment_attributes(segment) == {f"app.user.p{i:02}": i for i in range(64)}
    assert [r.getMessage() for r in caplog.records] == [
        "otel_segments: a segment has more than 64 properties; the rest are not put on spans"
    ]
    _warn_too_many.cache_clear()


def test_the_cache_keeps_maxsize_users_and_bounds_its_memory_of_misses_and_hits() -> None:
    cache = SegmentCache(maxsize=2)
    for user_id in ("a", "b", "c"):
        cache.put(user_id, {"x": user_id})
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") == {"app.user.x": "c"}
    cache.put("b", {"x": "b2"})  # a put refreshes recency: c goes out next, not b
    cache.put("d", {"x": "d"})
    assert cache.get("c") is None and cache.get("b") == {"app.user.x": "b2"} and cache.get("d") == {"app.user.x": "d"}
    for user_id in ("m1", "m2", "m3"):
        cache.get(user_id)
    wanted = cache.wanted()
    # hits and misses are remembered up to maxsize each: hits c and b (d's came third), misses a and c (not the m's)
    assert wanted[:2] == ["d", "b"] and sorted(wanted[2:]) == ["a", "c"]


def test_the_cache_keeps_only_the_selected_properties_and_names_an_unsupported_one(caplog) -> None:
    import logging

    from otel_segments.spans import context

    caplog.set_level(logging.WARNING)
    context._warned_keys.discard("weird")
    cache = SegmentCache(maxsize=5, span_properties={"engagement_level", "weird"})
    cache.put("u", {"engagement_level": "high", "total_hours": 12.5, "weird": {"a": 1}})
    assert cache.get("u") == {"app.user.engagement_level": "high"}
    assert [r.getMessage() for r in caplog.records] == [
        "otel_segments: user property 'weird' has an unsupported type dict; it is left out"
    ]
    assert SegmentCache(maxsize=5).span_properties is None
