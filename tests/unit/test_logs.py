"""Run logs: never overwritten, newest last, tails and partial lines."""

from gpuops.server.logs import LogReader, create_log, list_logs, tail_lines


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
