"""Real HTTP servers whose answers a test scripts: the broken, odd or foreign servers a real engine does
not play on demand (a stream cut short, an error event, a proxy's login page, ComfyUI, SGLang's profiler).

    with scripted_servers() as start:
        url = start(lambda h: send(h, 404, b'{"detail": "Not Found"}'))
        requests.get(url + "/anything").status_code   # 404

`respond(handler)` answers every GET and POST; `drain(handler)` reads the request's JSON body. Tests get
`start` from the `scripted` fixture (tests/support/fixtures.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def scripted_servers() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], str]]:
    """Start servers with `start(respond) -> url`; all of them are shut down on exit."""
    servers = []

    def start(respond: Callable[[BaseHTTPRequestHandler], None]) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                respond(self)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json",
         length: bool = True) -> None:
    """Answer with `body`; length=False sends no Content-Length and closes the connection after it."""
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    if length:
        handler.send_header("Content-Length", str(len(body)))
    else:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def drain(handler: BaseHTTPRequestHandler):
    """The request's JSON body (None without one), read so that the connection can carry the answer."""
    n = int(handler.headers.get("Content-Length") or 0)
    return json.loads(handler.rfile.read(n)) if n else None
