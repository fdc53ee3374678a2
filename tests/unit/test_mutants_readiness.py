"""Tests that kill surviving mutants (docs/development.md, "Mutation testing"): readiness.

Where a ready line says the server listens, how a URL gets another port, and the terminal thread that
must never hold up (or keep alive) a watch.
"""

from __future__ import annotations

import threading

import pytest

from gpuops.server import watch


@pytest.mark.parametrize(("line", "port"), [
    ("Uvicorn running on http://0.0.0.0:1 (Press CTRL+C to quit)", 1),
    ("server is listening on http://127.0.0.1:65535", 65535),
    ("Uvicorn running on http://[::1]:8080", 8080),
    ("Starting httpd at 127.0.0.1 on port 8080...", 8080),
    ("Uvicorn running on http://0.0.0.0:0", None),  # not a port a server listens on
    ("Uvicorn running on http://0.0.0.0:65536", None),
    ("Starting httpd at 127.0.0.1 on port 99999...", None),
    ("Application startup complete.", None),
])
def test_port_in_line(line, port):
    assert watch.port_in_line(line) == port


@pytest.mark.parametrize(("url", "port", "expected"), [
    ("http://10.0.0.5:8000", 9001, "http://10.0.0.5:9001"),
    ("https://gpu-box:8000/v1", 443, "https://gpu-box:443"),
    ("http://[::1]:8000", 9001, "http://[::1]:9001"),
    ("http://:8000", 9001, "http://127.0.0.1:9001"),  # no host: the loopback
    ("//gpu-box:8000", 9001, "http://gpu-box:9001"),  # no scheme: http
])
def test_with_port(url, port, expected):
    assert watch.with_port(url, port) == expected


def test_port_of_a_url():
    assert watch._port_of("http://127.0.0.1:9001/health") == 9001
    assert watch._port_of("http://127.0.0.1:99999") is None  # not a port: no crash
    assert watch._port_of(None) is None and watch._port_of("") is None


def test_lines_after_the_terminal_broke_are_dropped_and_counted_one_each():
    written = []

    def write(line):
        written.append(line)
        raise BrokenPipeError  # the terminal went away

    term = watch._Terminal(write)
    term.show(f"line {i}" for i in range(5))
    assert term.close(wait=5) == 4
    assert written == ["line 0"]


def test_the_terminal_thread_is_a_named_daemon_that_never_keeps_gpuops_alive():
    release = threading.Event()
    before = set(threading.enumerate())
    term = watch._Terminal(lambda line: release.wait(30))
    try:
        [thread] = set(threading.enumerate()) - before
        assert thread.name == "gpuops-log-shown"
        assert thread.daemon
    finally:
        release.set()
        term.close(wait=5)


def test_lines_that_do_not_fit_the_backlog_are_dropped_and_counted_one_each():
    busy, release = threading.Event(), threading.Event()

    def write(line):
        busy.set()
        release.wait(30)

    term = watch._Terminal(write, limit=2)
    try:
        term.show(["first"])
        assert busy.wait(10)  # the writer holds "first": the backlog is empty again
        term.show(f"line {i}" for i in range(5))
        assert term.dropped == 3  # two wait in the backlog, three did not fit
    finally:
        release.set()
        term.close(wait=5)
