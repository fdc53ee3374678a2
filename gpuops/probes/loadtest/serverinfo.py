"""What the server says about itself, for the report: its version, where it says it.

    server_facts("http://127.0.0.1:8000", "vllm")    # -> {"version": "0.11.0", "from": "/version"}

vLLM answers `GET /version` ({"version": ...}); SGLang `GET /get_server_info` ("version"); llama.cpp's
server `GET /props` ("build_info"). Servers that say nothing give {} (the report then says so). Short
timeouts: this must never hold a load test up.
"""

from __future__ import annotations

PATHS = {"vllm": ("/version",), "sglang": ("/get_server_info", "/version"), "llama.cpp": ("/props",)}
FIELDS = ("version", "build_info", "server_version")


def version_of(data) -> str | None:
    """The version in a server's answer, if it has one.

    >>> version_of({"version": "0.11.0"}), version_of({"build_info": "b6300-abc"}), version_of([1])
    ('0.11.0', 'b6300-abc', None)
    """
    if not isinstance(data, dict):
        return None
    for key in FIELDS:
        if isinstance(data.get(key), (str, int, float)) and str(data[key]).strip():
            return str(data[key])
    return None


def server_facts(url: str, engine: str | None, timeout: float = 2.0) -> dict:
    """{"version", "from"} from the first route that names a version; {} when none does (or on any error)."""
    import requests

    from gpuops.probes.openai import headers

    for path in PATHS.get(engine or "", ()) + (() if engine in PATHS else ("/version",)):
        try:
            resp = requests.get(url + path, headers={k: v for k, v in headers(False).items() if k != "Content-Type"},
                                timeout=timeout)
            version = version_of(resp.json()) if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            continue
        if version:
            return {"version": version, "from": path}
    return {}
