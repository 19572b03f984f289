"""A header-adding relay for harnesses that send no credentials (the MCP conformance suite).

It forwards every request to the gateway unchanged (Host and Origin included, so the gateway's DNS
rebinding checks still see what the harness sent) and adds `Authorization: Bearer $AEGRESS_RELAY_TOKEN`.
Responses stream back as they arrive, so SSE works. Loopback only; test use only.
"""

from __future__ import annotations

import argparse
import os
import socket

import httpx2
import uvicorn

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


def make_app(target: str, token: str):  # type: ignore[no-untyped-def]
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(120.0), follow_redirects=False, trust_env=False)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.decode().lower() not in HOP | {"authorization"}]
        headers.append((b"authorization", f"Bearer {token}".encode()))
        url = target + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
        request = client.build_request(scope["method"], url, headers=headers, content=body)
        response = await client.send(request, stream=True)
        try:
            out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    app = make_app(args.target, os.environ["AEGRESS_RELAY_TOKEN"])
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http="h11")).run(sockets=[sock])


if __name__ == "__main__":
    main()
