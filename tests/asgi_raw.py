"""One raw ASGI request, with the path and headers exactly as given (an HTTP client would
normalise ``..`` and rewrite ``Content-Length``): for the explorer's hostile-input tests."""

from __future__ import annotations

import anyio


def raw_request(
    app,
    method: str,
    path: str,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """Send one request to ``app`` (``Host: 127.0.0.1`` first); return the status and the body."""
    sent: list[dict] = []

    async def call() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), *(headers or [])],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if delivered:  # the body was read; a second receive waits for a disconnect
                await anyio.sleep_forever()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)

    anyio.run(call)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
