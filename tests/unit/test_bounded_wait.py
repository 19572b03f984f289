"""The pipeline's bounded wait for an evidence commit (`_within`): it must behave as `asyncio.wait_for` did,
since the evidence writer decides "the caller gave up" from the future being done."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline import _within


def test_result_and_timer_cleared() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        loop.call_soon(fut.set_result, "sealed")
        assert await _within(fut, 30.0) == "sealed"
        assert not [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]  # no timer left armed

    asyncio.run(main())


def test_timeout_leaves_the_future_done() -> None:
    async def main() -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await _within(fut, 0.0)
        return fut

    fut = asyncio.run(main())
    assert fut.done()  # the writer then neither commits a waiting intent nor resolves it again
    assert isinstance(fut.exception(), TimeoutError)


def test_caller_cancelled_cancels_the_future() -> None:
    async def main() -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(_within(fut, 30.0))
        await asyncio.sleep(0)  # let it start waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return fut

    assert asyncio.run(main()).cancelled()


def test_writer_error_propagates() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        loop.call_soon(fut.set_exception, RuntimeError("store refused"))
        with pytest.raises(RuntimeError, match="store refused"):
            await _within(fut, 30.0)

    asyncio.run(main())


def test_coroutine_falls_back_to_wait_for() -> None:
    async def nothing() -> None:
        return None

    async def main() -> None:
        assert await _within(nothing(), 1.0) is None

    asyncio.run(main())
