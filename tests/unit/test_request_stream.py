"""A request's stream keeps a bounded number of bytes of what its call caused (review finding 6)."""

from __future__ import annotations

import asyncio

from gateway import transport
from gateway.transport import RequestStream


def _log(i: int, kib: int) -> dict:
    return {"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": f"{i}:" + "x" * (kib * 1024)}}


def _flood(stream_id: str | None) -> RequestStream:
    """A hostile upstream sends 200 notifications of 1 MiB to a reader that never reads, then the answer."""

    async def go() -> RequestStream:
        stream = RequestStream(stream_id)

        async def call() -> dict:
            for i in range(200):
                await stream.related(_log(i, 1024))
            return {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}

        task = asyncio.ensure_future(call())
        stream.start(task, 7, float("inf"))
        await task
        await asyncio.sleep(0)  # the done callback pushes the answer
        return stream

    return asyncio.run(go())


def test_a_flood_of_notifications_is_bounded_in_bytes_and_the_answer_is_kept() -> None:
    for stream_id in ("s1", None):  # resumable (replay buffer) and plain
        stream = _flood(stream_id)
        kept = [stream.event(n) for n in range(stream.dropped, stream.total)] if stream_id else []
        assert stream._bytes <= transport._MAX_STREAM_BYTES
        assert stream.dropped > 0 and stream.total == 201  # ids stay stable: dropped events are counted
        last = stream.event(stream.total - 1)
        assert last == {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
        if stream_id:  # the newest notifications survive, in order, right before the answer
            numbers = [int(m["params"]["data"].split(":")[0]) for m in kept[:-1]]
            assert numbers == list(range(200 - len(numbers), 200)) and len(numbers) >= 20
