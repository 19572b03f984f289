"""SSE parsing cost: our bytes parser (gateway.upstreams.sse) against httpx2's (derived from httpx-sse).

Run: .venv/bin/python bench/sse_bench.py [--mb 10]

The same stream (MCP-shaped `data:` events of ~1 KiB, plus one event of 1 MiB) is fed in chunks
of 1 B to 64 KiB. httpx2's parser works on text, so its figure includes the incremental UTF-8
decoding its `EventSource` does; ours hands bytes to orjson as they are. The 1-byte row uses a
tenth of the bytes (it is per-call overhead, not parsing) and is scaled up to the same total.
"""

from __future__ import annotations

import argparse
import codecs
import time

from httpx2._sse import _SSEParser  # private: the parser behind httpx2.EventSource

from gateway.upstreams.sse import SseParser


def stream(total: int) -> bytes:
    small = b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"x":"' + b"a" * 900 + b'"}}\r\n\r\n'
    big = b"id: big\ndata: " + b"b" * (1 << 20) + b"\n\n"
    body = small * max(1, (total - len(big)) // len(small))
    return body[: len(body) // 2] + big + body[len(body) // 2 :]


def ours(data: bytes, size: int) -> int:
    parser, n = SseParser(), 0
    for i in range(0, len(data), size):
        n += len(parser.feed(data[i : i + size]))
    return n


def httpx2s(data: bytes, size: int) -> int:
    parser, decoder, n = _SSEParser(), codecs.getincrementaldecoder("utf-8")(), 0
    for i in range(0, len(data), size):
        n += sum(1 for _ in parser.decode(decoder.decode(data[i : i + size])))
    return n + sum(1 for _ in parser.flush())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=10)
    args = ap.parse_args()
    full = stream(int(args.mb * (1 << 20)))
    print(f"{len(full) / (1 << 20):.1f} MiB per run; seconds (MB/s)")
    print(f"{'chunk':>8} {'ours':>16} {'httpx2':>16} {'ratio':>6}")
    for size in (1, 16, 256, 4096, 65536):
        data = full if size > 1 else stream(len(full) // 10)
        scale = len(full) / len(data)
        row = []
        for fn in (ours, httpx2s):
            t0 = time.perf_counter()
            events = fn(data, size)
            row.append((time.perf_counter() - t0) * scale)
            assert events > 0
        a, b = row
        mb = len(full) / 1e6
        print(f"{size:>8} {a:>7.2f} ({mb / a:>6.0f}) {b:>7.2f} ({mb / b:>6.0f}) {b / a:>6.1f}")


if __name__ == "__main__":
    main()
