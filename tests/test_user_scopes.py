"""``user_context`` shared by concurrent tasks and threads, and on generators and async generators."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

from otel_segments.spans.context import clear_user, current_user, set_user, user_context


def _who() -> str | None:
    user = current_user()
    return None if user is None else user.user_id


def test_one_instance_shared_by_concurrent_tasks() -> None:
    """A module-level ``ctx = user_context(...)`` entered by concurrent handlers: the first to leave must not
    reset another's token (``ValueError`` into the app), and each gets its own previous user back."""
    shared = user_context("shared")
    seen: dict[str, list[str | None]] = {}

    async def handler(name: str, entered: asyncio.Event, leave: asyncio.Event) -> None:
        set_user(f"before-{name}")
        with shared:
            entered.set()
            await leave.wait()
            inside = _who()
        seen[name] = [inside, _who()]

    async def main() -> None:
        a_in, b_in, a_go, b_go = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(handler("a", a_in, a_go))
        await a_in.wait()
        b = asyncio.create_task(handler("b", b_in, b_go))
        await b_in.wait()
        a_go.set()  # the first in leaves first, while b is still inside
        await a
        b_go.set()
        await b

    asyncio.run(main())
    assert seen == {"a": ["shared", "before-a"], "b": ["shared", "before-b"]}


def test_one_instance_shared_by_threads() -> None:
    shared = user_context("shared")
    both_inside = threading.Barrier(2, timeout=30)
    a_left = threading.Event()
    seen: dict[str, list[str | None]] = {}
    errors: list[BaseException] = []

    def handler(name: str) -> None:
        try:
            with shared:
                both_inside.wait()
                if name == "b":
                    assert a_left.wait(30)
                inside = _who()
            if name == "a":
                a_left.set()
            seen[name] = [inside, _who()]
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            a_left.set()

    threads = [threading.Thread(target=handler, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert seen == {"a": ["shared", None], "b": ["shared", None]}


def test_nested_entries_of_one_instance_unwind_in_order() -> None:
    reused = user_context("r")
    set_user("outer")
    with reused:
        with user_context("inner"), reused:
            assert _who() == "r"
        assert _who() == "r"
    assert _who() == "outer"
    clear_user()


def test_a_generator_runs_each_step_as_the_user() -> None:
    """Streaming responses are generators consumed by the server after the handler returned."""

    @user_context("streamer")
    def stream(count: int) -> Iterator[str | None]:
        for _ in range(count):
            yield _who()
        return

    set_user("consumer")
    steps = stream(3)
    seen = []
    for item in steps:
        seen.append(item)
        assert _who() == "consumer"  # between steps, the consumer's own user
    assert seen == ["streamer"] * 3
    assert stream.__name__ == "stream"
    clear_user()


def test_a_generator_gets_sent_values_thrown_errors_and_close_as_the_user() -> None:
    events: list[tuple[str, str | None]] = []

    @user_context("g")
    def echo() -> Iterator[object]:
        received = None
        try:
            while True:
                try:
                    received = yield received
                    events.append(("sent", _who()))
                except KeyError:
                    events.append(("thrown", _who()))
                    received = "recovered"
        finally:
            events.append(("closed", _who()))

    generator = echo()
    assert next(generator) is None
    assert generator.send("x") == "x"
    assert generator.throw(KeyError("k")) == "recovered"
    generator.close()
    assert events == [("sent", "g"), ("thrown", "g"), ("closed", "g")]
    assert _who() is None


def test_a_generator_return_value_reaches_yield_from() -> None:
    @user_context("g")
    def inner() -> Iterator[int]:
        yield 1
        return 7

    def outer() -> Iterator[int]:
        result = yield from inner()
        yield result

    assert list(outer()) == [1, 7]


def test_an_async_generator_runs_each_step_as_the_user() -> None:
    @user_context("async-streamer")
    async def stream(count: int) -> AsyncIterator[str | None]:
        for _ in range(count):
            await asyncio.sleep(0)
            yield _who()

    async def consume() -> list[str | None]:
        set_user("consumer")
        seen = []
        async for item in stream(3):
            seen.append(item)
            assert _who() == "consumer"
        return seen

    assert asyncio.run(consume()) == ["async-streamer"] * 3


def test_an_async_generator_closed_early_runs_its_cleanup_as_the_user() -> None:
    cleaned: list[str | None] = []

    @user_context("a")
    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(_who())

    async def consume() -> None:
        generator = stream()
        assert await generator.__anext__() == 1
        await generator.aclose()

    asyncio.run(consume())
    assert cleaned == ["a"]
