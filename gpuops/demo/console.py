"""The demo's own log lines, in vLLM's format, flushed one by one (stdout is usually a log file).

    >>> stamp("INFO", "Loading model gpuops-demo-1b", time.struct_time((2025, 11, 22, 10, 15, 1, 5, 326, 0)))
    'INFO 11-22 10:15:01 [demo] Loading model gpuops-demo-1b'
"""

from __future__ import annotations

import threading
import time
from typing import TextIO


def stamp(level: str, text: str, now: time.struct_time) -> str:
    return f"{level} {time.strftime('%m-%d %H:%M:%S', now)} [demo] {text}"


class Console:
    """Writes whole lines and flushes each: a line that sits in a buffer is a line gpuops cannot watch for."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._lock = threading.Lock()  # the profiler's writer thread logs too

    def raw(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def info(self, text: str) -> None:
        self.raw(stamp("INFO", text, time.localtime()))

    def warning(self, text: str) -> None:
        self.raw(stamp("WARNING", text, time.localtime()))

    def error(self, text: str) -> None:
        self.raw(stamp("ERROR", text, time.localtime()))
