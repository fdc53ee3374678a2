"""Is the server up? One GET of its health path over a plain socket: no HTTP library to import.

    probe = HealthProbe("http://127.0.0.1:8000", ENGINES["vllm"])
    probe()                         # GET /health answered 200
    True

`inv status` asks every running server this, and it must start fast (a fleet runs it once per host):
requests costs ~80 ms to import, http.client ~30 ms; the status line of the answer is all we read.
No proxy from the environment is used (one must never answer for localhost).
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

from gpuops.server.engines import Engine

_STATUS_LINE = re.compile(rb"^HTTP/\d(?:\.\d)?\s+(\d{3})")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status code of `GET url`, or None when nothing answered (refused, reset, timeout, garbage).

    >>> http_status("http://127.0.0.1:1/health") is None
    True
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]" if ":" in host else host
    request = (f"GET {path} HTTP/1.1\r\nHost: {netloc}:{port}\r\nUser-Agent: gpuops\r\nAccept: */*\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return None
    m = _STATUS_LINE.match(head)
    return int(m[1]) if m else None


class HealthProbe:
    """GET <url><health_path> with a short timeout; True when the engine would call it ready."""

    def __init__(self, base_url: str, engine: Engine, timeout: float = 2.0):
        self.url = base_url.rstrip("/") + (engine.health_path or "/")
        self.engine = engine
        self.timeout = timeout

    def __call__(self) -> bool:
        code = http_status(self.url, self.timeout)
        if code is None:
            return False
        return code == 200 or (self.engine.any_answer_is_up and code < 500)


def record_healthy(url: str | None, engine_name: str, timeout: float = 2.0) -> bool:
    """Does a recorded server pass its engine's health check? One with no URL has nothing to ask: yes."""
    if not url:
        return True
    from gpuops.server.engines import ENGINES

    return HealthProbe(url, ENGINES.get(engine_name, ENGINES["generic"]), timeout=timeout)()
