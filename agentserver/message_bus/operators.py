"""Stream operators the pipeline needs beyond aiostream's own.

`expand` is a synchronous flat-map: for each item, it yields every item of the list the
step returns, in order. aiostream's `flatmap` runs each sub-sequence in its own task,
which costs tens of microseconds per message; pipeline steps are plain functions, so
no task is needed.
"""

from __future__ import annotations

from typing import AsyncIterable, AsyncIterator, Callable, TypeVar

from aiostream.core import pipable_operator, streamcontext

__all__ = ["expand"]

T = TypeVar("T")
U = TypeVar("U")


@pipable_operator
async def expand(source: AsyncIterable[T], step: Callable[[T], list[U]]) -> AsyncIterator[U]:
    """Yield every item of `step(item)` for each item of `source`."""
    async with streamcontext(source) as items:
        async for item in items:
            for out in step(item):
                yield out
