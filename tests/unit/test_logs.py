"""Run logs: never overwritten, newest last, tails and partial lines."""

from gpuops.server.logs import LogReader, create_log, list_logs, tail_lines
from support.fixtures import wait_for


def test_two_logs_in_the_same_second_get_distinct_names(tmp_path):
    a = create_log(tmp_path, "server", now=1_700_000_000)
    a.write_text("first run\n")
    b = create_log(tmp_path, "server", now=1_700_000_000)
    assert a != b and b.name.endswith("-2.log")
    assert a.read_text() == "first run\n"


def test_logs_listed_oldest_first_newest_last_per_prefix(tmp_path):
    late = create_log(tmp_path, "server", now=1_700_000_100)
    early = create_log(tmp_path, "server", now=1_700_000_000)
    same = create_log(tmp_path, "server", now=1_700_000_100)
    locust = create_log(tmp_path, "locust", now=1_700_000_050)
    assert list_logs(tmp_path, "server") == [early, late, same]
    assert list_logs(tmp_path) == [early, locust, late, same]


def test_tail_lines_reads_only_the_end(tmp_path):
    p = tmp_path / "big.log"
    p.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail_lines(p, 3) == ["line 99997", "line 99998", "line 99999"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


def test_reader_returns_whole_lines_and_holds_a_partial_one(tmp_path):
    p = tmp_path / "s.log"
    p.write_text("")
    with LogReader(p) as r, open(p, "a") as w:
        w.write("one\ntw")
        w.flush()
        assert r.read_lines() == ["one"]
        w.write("o\n")
        w.flush()
        assert r.read_lines() == ["two"]
        w.write("tail without newline")
        w.flush()
        assert r.read_lines() == []
        assert r.flush_partial() == ["tail without newline"]


def test_reader_shows_a_carriage_return_redrawn_line_as_a_terminal_would(tmp_path):
    p = tmp_path / "bar.log"
    p.write_bytes(b"\r 10%|#     |\r 50%|###   |")
    r = LogReader(p)
    assert r.read_lines() == [] and r.grew and r.progress() == " 50%|###   |"
    with open(p, "ab") as f:
        f.write(b"\r100%|######|\r\nnext\n")
    assert r.read_lines() == ["100%|######|", "next"]
    assert r.read_lines() == [] and not r.grew
    r.close()


def test_a_burst_is_read_in_bounded_chunks(tmp_path):
    import tracemalloc

    from gpuops.server.logs import MAX_PARTIAL, READ_CHUNK

    p = tmp_path / "burst.log"
    with open(p, "wb") as f:
        for _ in range(40):  # 40 MB of log lines, as a server dumping its config in a loop
            f.write(b"x" * 99 + b"\n" + (b"y" * 99 + b"\n") * 10_485)
    tracemalloc.start()
    total = 0
    with LogReader(p) as r:
        while True:
            lines = r.read_lines()
            if not lines and not r.more:
                break
            assert sum(len(line) + 1 for line in lines) <= READ_CHUNK + MAX_PARTIAL  # a chunk and a line begun
            total += len(lines)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == 40 * 10_486
    assert peak < 16 * READ_CHUNK  # a few chunks, never the burst


def test_an_endless_line_is_held_bounded(tmp_path):
    from gpuops.server.logs import MAX_PARTIAL

    p = tmp_path / "one-line.log"
    p.write_bytes(b"z" * (5 * MAX_PARTIAL))
    with LogReader(p) as r:
        while r.read_lines() or r.more:
            pass
        assert len(r.flush_partial()[0]) <= MAX_PARTIAL


def test_follow_moves_to_a_newer_log_of_the_same_server_and_says_so(tmp_path):
    import threading

    from gpuops.server.logs import follow, newer_log

    old = create_log(tmp_path, "server", now=1_700_000_000)
    create_log(tmp_path, "locust", now=1_700_000_500)  # another kind: never followed into
    lines: list[str] = []
    done = threading.Event()
    t = threading.Thread(target=follow, args=(old, lines.append), daemon=True,
                         kwargs={"should_stop": done.is_set, "poll": 0.01,
                                 "newer": lambda current: newer_log(tmp_path, current)})
    t.start()
    try:
        new = create_log(tmp_path, "server", now=1_700_000_100)
        new.write_text("new server line\n")
        assert wait_for(lambda: "new server line" in lines, timeout=10), lines
        assert any(new.name in line and "following it now" in line for line in lines)
    finally:
        done.set()
        t.join(5)
