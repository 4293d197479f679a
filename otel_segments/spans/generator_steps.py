"""Running each step of a generator with a context variable set: what a decorator means for a generator.

A generator's body runs whenever its consumer resumes it, in the consumer's context: a streaming
response is iterated by the server after the handler that made it returned, so a value set around
the call that made the generator is long gone when its body runs. Setting it around each step
(each ``send``, ``throw`` and the final ``close``) gives the body the value wherever it is resumed,
and leaves the consumer's own value untouched between steps.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

_T = TypeVar("_T")


@contextmanager
def _set(var: ContextVar[_T], value: _T) -> Iterator[None]:
    """``var`` is ``value`` for one step, and what it was again after it."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def each_step_with(
    var: ContextVar[_T], value: _T, func: Callable[..., Generator[Any, Any, Any]]
) -> Callable[..., Generator[Any, Any, Any]]:
    """A generator function like ``func`` whose generator runs each step with ``var`` set to ``value``."""

    def steps(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        generator = func(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                with _set(var, value):
                    item = generator.throw(thrown) if thrown is not None else generator.send(sent)
            except StopIteration as stop:
                return stop.value
            sent, thrown = None, None
            try:
                sent = yield item
            except GeneratorExit:
                with _set(var, value):
                    generator.close()
                raise
            except BaseException as error:  # noqa: BLE001 - thrown in by the consumer: the generator handles it
                thrown = error

    return steps


def each_async_step_with(
    var: ContextVar[_T], value: _T, func: Callable[..., AsyncGenerator[Any, Any]]
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """An async generator function like ``func`` whose generator runs each step with ``var`` set to ``value``."""

    async def steps(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        generator = func(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                with _set(var, value):
                    item = await (generator.athrow(thrown) if thrown is not None else generator.asend(sent))
            except StopAsyncIteration:
                return
            sent, thrown = None, None
            try:
                sent = yield item
            except GeneratorExit:
                with _set(var, value):
                    await generator.aclose()
                raise
            except BaseException as error:  # noqa: BLE001 - thrown in by the consumer: the generator handles it
                thrown = error

    return steps
