"""State records of the wrong shape and run folders gpuops cannot write: one clear error each, never a crash.

Pure parsing (`record_from`) is table-driven; the file cases use real files and folders in tmp_path.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from gpuops.errors import GpuopsError, UsageError
from gpuops.rundir import RunDir
from gpuops.server import state
from gpuops.server.state import CorruptRecord, StateRecord, record_from


def good(**changes) -> dict:
    rec = StateRecord(name="server", pid=4242, create_time=1700000000.5, pgid=4242, tag="server:abc", host="127.0.0.1",
                      port=8000, url="http://127.0.0.1:8000", log_path="/p/do_not_commit/server_logs/s.log",
                      command="vllm serve m", cwd="/p", engine="vllm")
    return {**asdict(rec), **changes}


def test_a_well_formed_record_reads_back_as_it_was_saved():
    data = good(ready_at=1700000001.0, gpus=[0, 1], some_future_field="ignored")
    rec = record_from(json.dumps(data), "server")
    assert (rec.pid, rec.create_time, rec.port, rec.gpus, rec.ready_at) == (4242, 1700000000.5, 8000, [0, 1],
                                                                             1700000001.0)


def test_optional_fields_may_be_absent_and_nullable_ones_null():
    data = {k: v for k, v in good(port=None, url=None).items() if k not in ("started_at", "gpus", "ready_at")}
    rec = record_from(json.dumps(data), "server")
    assert rec.port is None and rec.url is None and rec.gpus == []


@pytest.mark.parametrize(("text", "reason"), [
    ("[]", "it holds an array, not a JSON object"),
    ("null", "it holds null, not a JSON object"),
    ('"server"', "it holds a string, not a JSON object"),
    ("42", "it holds a number, not a JSON object"),
    ('{"name": "x"}', "fields missing: pid, create_time, pgid"),
    ("", "it is empty"),
    ("  \n", "it is empty"),
    ("{bad", "it is not JSON"),
    (b"\xff\xfe{}", "it is not JSON"),
    (json.dumps(good(pid="abc")), '"pid" is "abc" (a string), not a whole number'),
    (json.dumps(good(pid=True)), '"pid" is true (a boolean), not a whole number'),
    (json.dumps(good(pid=12.5)), '"pid" is 12.5 (a number), not a whole number'),
    (json.dumps(good(create_time="yesterday")), '"create_time" is "yesterday" (a string), not a number'),
    (json.dumps(good(pgid=None)), '"pgid" is null (null), not a whole number'),
    (json.dumps(good(port="8000")), '"port" is "8000" (a string), not a whole number'),
    (json.dumps(good(port=70000)), '"port" 70000 is not a port number'),
    (json.dumps(good(pid=0)), "not a process ID"),
    (json.dumps(good(pgid=-1)), "not a process ID"),
    (json.dumps(good(tag=7)), '"tag" is 7 (a number), not a string'),
    (json.dumps(good(log_path=None)), '"log_path" is null (null), not a string'),
    (json.dumps(good(gpus="0,1")), '"gpus" is "0,1" (a string), not an array'),
    (json.dumps(good(gpus=[0, "1"])), '"gpus" is [0, "1"], not a list of GPU indices'),
    (json.dumps(good(ready_at="now")), '"ready_at" is "now" (a string), not a number'),
    (json.dumps(good(name="other")), "\"name\" is \"other\", but the file is the record of 'server'"),
])
def test_a_record_of_the_wrong_shape_says_what_is_wrong(text, reason):
    with pytest.raises(ValueError) as caught:
        record_from(text, "server")
    assert reason in str(caught.value)


def test_a_long_wrong_value_is_clipped_in_the_reason():
    with pytest.raises(ValueError) as caught:
        record_from(json.dumps(good(pid="x" * 500)), "server")
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize("body", ["[]", "null", '{"name": "x"}', json.dumps(good(pid="abc")), "{bad", ""])
def test_loading_a_corrupt_record_names_its_path_and_what_to_do(tmp_path, body):
    rd = RunDir(tmp_path / "do_not_commit")
    rd.ensure(rd.state)
    (rd.state / "server.json").write_text(body)
    with pytest.raises(CorruptRecord) as caught:
        state.load(rd, "server")
    err = caught.value
    assert err.exit_code == 1 and err.path == rd.state / "server.json"
    assert "server.json is unusable" in err.message and "sets it aside" in err.hint


def test_a_folder_where_the_record_should_be_is_a_corrupt_record(tmp_path):
    rd = RunDir(tmp_path)
    (rd.state / "server.json").mkdir(parents=True)
    with pytest.raises(CorruptRecord, match="it is a folder"):
        state.load(rd, "server")


def test_no_record_and_no_run_folder_both_read_as_no_record(tmp_path):
    assert state.load(RunDir(tmp_path / "missing"), "server") is None
    (tmp_path / "file").write_text("")
    assert state.load(RunDir(tmp_path / "file"), "server") is None  # do_not_commit is a file


def test_all_records_raises_on_a_corrupt_one_or_hands_it_over(tmp_path):
    rd = RunDir(tmp_path)
    state.save(rd, StateRecord(**good(name="a")))
    (rd.state / "b.json").write_text("[]")
    with pytest.raises(CorruptRecord):
        state.all_records(rd)
    seen = []
    assert [r.name for r in state.all_records(rd, on_corrupt=seen.append)] == ["a"]
    assert [e.path.name for e in seen] == ["b.json"]


def test_set_aside_renames_the_record_keeping_its_bytes_and_never_overwrites_an_earlier_one(tmp_path):
    rd = RunDir(tmp_path)
    rd.ensure(rd.state)
    moved = []
    for body in ("[]", "null"):
        (rd.state / "server.json").write_text(body)
        with pytest.raises(CorruptRecord) as caught:
            state.load(rd, "server")
        moved.append(state.set_aside(caught.value))
    assert not (rd.state / "server.json").exists()
    assert [p.read_text() for p in moved] == ["[]", "null"]
    assert all(p.name.startswith("server.json.corrupt-") for p in moved) and moved[0] != moved[1]
    assert state.all_records(rd) == []  # a set-aside record is never read as one


def test_saving_into_a_folder_that_is_a_file_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "do_not_commit").write_text("not a folder")
    with pytest.raises(UsageError) as caught:
        state.save(RunDir(tmp_path / "do_not_commit"), StateRecord(**good()))
    assert "do_not_commit is a file, not a folder" in caught.value.message
    assert "move" in caught.value.hint


def test_saving_over_a_folder_says_so_and_leaves_no_temporary_file(tmp_path):
    rd = RunDir(tmp_path)
    (rd.state / "server.json").mkdir(parents=True)
    with pytest.raises(UsageError, match="server.json: it is a folder"):
        state.save(rd, StateRecord(**good()))
    assert sorted(p.name for p in rd.state.iterdir()) == ["server.json"]


def test_the_lock_of_a_run_folder_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "do_not_commit").write_text("")
    with pytest.raises(UsageError, match="do_not_commit is a file, not a folder"):
        with state.server_lock(RunDir(tmp_path / "do_not_commit"), "server", print, 1):
            pass


def test_a_name_too_long_for_the_filesystem_is_named_clipped_with_what_to_do(tmp_path):
    with pytest.raises(UsageError) as caught:
        with state.server_lock(RunDir(tmp_path), "a" * 300, print, 1):
            pass
    assert "too long for the filesystem" in caught.value.message and len(caught.value.message) < 250
    assert "shorter name" in caught.value.hint


@pytest.mark.parametrize(("code", "exit_code", "words"), [
    (errno.ENOSPC, 1, "no space left"),
    (errno.EDQUOT, 1, "no space left"),
    (errno.EROFS, 1, "read-only"),
    (errno.EACCES, 1, "permission denied"),
    (errno.EIO, 1, os.strerror(errno.EIO)),
    (errno.EISDIR, 2, "it is a folder"),
    (errno.ENAMETOOLONG, 2, "too long"),
])
def test_each_reason_a_write_fails_has_its_own_words_and_exit_code(tmp_path, code, exit_code, words):
    err = state.run_folder_error(tmp_path / "state" / "server.json", OSError(code, os.strerror(code)))
    assert isinstance(err, GpuopsError) and err.exit_code == exit_code
    assert words in err.message and "server.json" in err.message and err.hint


def test_every_write_error_is_explained_not_raised_raw(tmp_path):
    """Whatever errno the filesystem answers, the user reads a GpuopsError naming the path."""
    for code in sorted(errno.errorcode):
        err = state.run_folder_error(Path(tmp_path) / "x.json", OSError(code, os.strerror(code)))
        assert isinstance(err, GpuopsError) and "x.json" in err.message
