"""A bare pass-through hop: the floor a gateway's added latency is measured against (issue 10).

Listens on 127.0.0.1 (port 0 unless given), prints `LISTENING http://127.0.0.1:PORT/mcp`, and forwards
every request (POST, GET, DELETE; any path) to one upstream URL over one keep-alive aiohttp
ClientSession: the method, the body and the headers an MCP call needs (content-type, accept,
mcp-session-id, mcp-protocol-version). The upstream's status, headers (less the hop-by-hop ones) and
body come back unchanged, streamed chunk by chunk as they arrive. Nothing else: no parsing, no
auth, no logging. Runs with the peer venv's python (aiohttp is not a project dependency):

    .cache/bench-peers/venv/bin/python bench/peers/bare_hop.py UPSTREAM_URL [--port 0]

SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

FORWARD = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "date", "server", "content-length"}


async def serve(upstream: str, port: int) -> None:
    session = ClientSession(
        connector=TCPConnector(limit=256, keepalive_timeout=60),
        timeout=ClientTimeout(total=300, sock_connect=10),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = {k: v for k in FORWARD if (v := request.headers.get(k)) is not None}
        body = await request.read()
        async with session.request(request.method, upstream, data=body or None, headers=headers) as up:
            answer = web.StreamResponse(
                status=up.status, reason=up.reason,
                headers={k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            if up.content_length is not None:
                answer.content_length = up.content_length
            await answer.prepare(request)
            async for chunk in up.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(web.Server(handle), sock=sock)
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("upstream", help="the upstream MCP endpoint, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.upstream, args.port))


if __name__ == "__main__":
    main()
