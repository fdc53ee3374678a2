"""The Locust user gpuops ships: streamed LLM requests timed to the chunk, one raw record each.

Run only by Locust (`python -m locust -f gpuops/probes/loadtest/locustfile.py ...`, started by runner.py),
never imported by `inv`: Locust monkey-patches the standard library with gevent.

    GPUOPS_LOADTEST_PLAN=.../plan-locust.json GPUOPS_LOADTEST_WORKER=0 python -m locust -f locustfile.py ...

Each Locust process appends, one JSON line per request, to `records-w<N>.jsonl`, and once a second
its CPU use, event-loop lag, requests in flight and how long it has heard nothing from the server
to `client-w<N>.jsonl` (what the runner watches for a stalled server), all in the plan's output
folder; in --qps mode it also writes when its schedule started to `schedule-w<N>.json`. Locust's
own statistics get the end-to-end latency as the request's response time, plus rows named "TTFT"
and "TPOT" so its UI, CSV and HTML report show them (bucketed; the records are the exact values).

Timing: the HTTP client is geventhttpclient (what Locust's FastHttpUser is built on), but the body
is read line by line with `readline`, which returns as soon as a line has arrived. Locust's own
`iter_content(chunk_size)` waits until chunk_size bytes have arrived, which holds back the first
token of a short stream and merges chunks: a wrong TTFT and ITL.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from http.client import HTTPException
from urllib.parse import urlsplit

import gevent
import psutil
from gevent import GreenletExit
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed
from locust import User, events, task

from gpuops.probes.loadtest import prompts
from gpuops.probes.loadtest.arrivals import ArrivalSchedule
from gpuops.probes.loadtest.lengths import Lengths
from gpuops.probes.loadtest.metrics import reason_key, tpot_ms
from gpuops.probes.openai import (
    API_PATHS,
    DONE,
    StreamFormatError,
    chunk_text,
    error_message,
    headers,
    parse_sse_line,
    request_body,
    usage_tokens,
)

PLAN_ENV = "GPUOPS_LOADTEST_PLAN"
WORKER_ENV = "GPUOPS_LOADTEST_WORKER"
CONNECT_BACKOFF_S = 0.25  # after a refused connection: do not spin hundreds of failures a second
ERROR_EXCERPT = 160
SAMPLE_EVERY_S = 1.0
LAG_PROBE_S = 0.05

_plan_path = os.environ.get(PLAN_ENV)
if not _plan_path:
    raise SystemExit(f"gpuops locustfile: {PLAN_ENV} is not set; run it with `inv load-test`")
with open(_plan_path, encoding="utf-8") as _f:
    PLAN: dict = json.load(_f)
WORKER = int(os.environ.get(WORKER_ENV, "0"))
OUT_DIR = PLAN["out_dir"]
EMBEDDINGS = PLAN["api"] == "embeddings"
API_PATH = urlsplit(PLAN["url"]).path.rstrip("/") + ("/v1/embeddings" if EMBEDDINGS else API_PATHS[PLAN["api"]])
MODELS_PATH = urlsplit(PLAN["url"]).path.rstrip("/") + "/v1/models"
# the workload (gpuops.probes.loadtest.workloads): exact-token prompts when the plan carries a calibration
WORKLOAD = PLAN.get("workload") or {}
MAKER = prompts.PromptMaker(PLAN["seed"], WORKLOAD.get("calibration"), PLAN.get("shared_prefix_tokens") or 0)
PROMPT_LENGTHS = Lengths.of(PLAN["prompt_tokens"])
# --max-tokens dataset: each dataset prompt's own answer length (64 where its row gives none)
OUTPUT_LENGTHS = None if PLAN["max_tokens"] == "dataset" else Lengths.of(PLAN["max_tokens"])
LENGTH_RNG = random.Random(f"{PLAN['seed']}-{WORKER}")  # seeded: the same run draws the same lengths
TURNS = int(PLAN.get("turns") or 1)


def _dataset() -> list[dict]:
    path = (WORKLOAD.get("dataset") or {}).get("file")
    if not path:
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


DATASET = _dataset()


class RequestError(Exception):
    """A failed request, carrying its reason (what Locust's failure table groups by)."""


class _Process:
    """What the users of one Locust process share: record files, the arrival schedule, the sampler."""

    def __init__(self):
        self.seq = 0
        self._records = None
        self.schedule = None
        self.t0_perf = None
        self.t0_wall = None
        self.sampler = None
        self.shared_body = None
        self.stopping = False  # the run is being stopped: its report writing must not count as load
        self.interrupted = False  # Ctrl-C (SIGINT): Locust writes its HTML report while users still run
        self.environment = None
        self.test_start_perf = None  # when Locust started the test: its --run-time counts from here
        self.in_flight = 0
        self.busy_since = 0.0  # perf time when requests went in flight after none were
        self.last_data = 0.0  # perf time of the last bytes from the server, any request

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def write(self, record: dict) -> None:
        if self._records is None:
            # line-buffered: every record is on disk as soon as it is complete (partial runs keep them)
            self._records = open(os.path.join(OUT_DIR, f"records-w{WORKER}.jsonl"), "a",  # noqa: SIM115
                                 buffering=1, encoding="utf-8")
        self._records.write(json.dumps(record, separators=(",", ":")) + "\n")

    def start(self, environment) -> None:
        """On the first user of this process: the schedule clock (qps mode) and the CPU sampler."""
        if self.t0_perf is not None:
            return
        self.t0_perf, self.t0_wall = time.perf_counter(), time.time()
        if PLAN.get("qps"):
            workers = max(1, int(PLAN.get("workers", 1)))
            end = None
            if PLAN.get("headless", True):
                # Locust stops --run-time after ITS start; the schedule starts later (after the first
                # warm-up), so it ends that much earlier: nothing is due that Locust would not send
                started = self.test_start_perf if self.test_start_perf is not None else self.t0_perf
                end = max(0.0, PLAN["run_time_s"] - (self.t0_perf - started))
            self.schedule = ArrivalSchedule(PLAN["qps"], PLAN["arrival"], PLAN["seed"], worker=WORKER % workers,
                                            workers=workers, end_s=end)
            with open(os.path.join(OUT_DIR, f"schedule-w{WORKER}.json"), "w", encoding="utf-8") as f:
                json.dump({"worker": WORKER, "schedule_worker": WORKER % workers, "workers": workers,
                           "t0": self.t0_wall, "end_s": end}, f)
        self.sampler = gevent.spawn(_sample_client, environment)


STATE = _Process()


def _sample_client(environment) -> None:
    """Once a second: this process's CPU % of one core and its worst event-loop lag in that second."""
    proc = psutil.Process()
    proc.cpu_percent(None)
    path = os.path.join(OUT_DIR, f"client-w{WORKER}.jsonl")
    with open(path, "a", buffering=1, encoding="utf-8") as out:
        while True:
            worst = 0.0
            started = time.perf_counter()
            while time.perf_counter() - started < SAMPLE_EVERY_S:
                before = time.perf_counter()
                gevent.sleep(LAG_PROBE_S)
                worst = max(worst, (time.perf_counter() - before - LAG_PROBE_S) * 1000.0)
            runner = environment.runner
            users = runner.user_count if runner is not None else 0
            quiet = time.perf_counter() - max(STATE.last_data, STATE.busy_since) if STATE.in_flight else 0.0
            out.write(json.dumps({"worker": WORKER, "t": time.time(), "cpu": proc.cpu_percent(None),
                                  "loop_lag_ms": round(worst, 3), "users": users, "in_flight": STATE.in_flight,
                                  "quiet_s": round(quiet, 3), "stopping": STATE.stopping}) + "\n")


def _excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            msg = error_message(data)
            if msg:
                text = str(msg)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:ERROR_EXCERPT] + ("…" if len(text) > ERROR_EXCERPT else "")


def measure(http: HTTPClient, path: str, payload: bytes, headers: dict, stream: bool,
            heard: dict | None = None, text: list | None = None) -> dict:
    """Send one request and time it to the chunk; the fields of its record (no identity, no wall times).

    `heard["last"]` (and the process-wide STATE.last_data) get the perf time of every arrival from
    the server, so a request cut off mid-way can tell how long it had heard nothing.
    Raises GreenletExit through (the user was stopped); every other problem becomes a failed record.
    `text` (a list) gets the answer's text pieces (multi-turn sessions carry the answer on).
    """
    heard = {} if heard is None else heard
    rec: dict = {"ok": False, "error": None, "error_kind": None, "status": None, "ttft_ms": None,
                 "e2el_ms": None, "itl_ms": [], "output_tokens": None, "prompt_tokens": None,
                 "tokens_from": None, "chunks": 0, "bytes": 0}
    itl = rec["itl_ms"]
    t0 = time.perf_counter()
    last = None
    n_text = 0
    resp = None
    try:
        try:
            try:
                resp = http.request("POST", path, body=payload, headers=headers)
            except HTTPConnectionClosed:
                # A kept-alive connection the server closed after its last answer (llama.cpp's server does
                # after every stream, although it announces keep-alive): the request never reached it.
                # Send it once more on a fresh connection, timed from the new send.
                t0 = time.perf_counter()
                resp = http.request("POST", path, body=payload, headers=headers)
        except ConnectionRefusedError:
            return _fail(rec, t0, "connect", "connection refused")
        except TimeoutError:
            return _fail(rec, t0, "timeout", "no response before the request timeout")
        except HTTPConnectionClosed:
            return _fail(rec, t0, "connect", "the connection closed before a response")
        except OSError as err:
            return _fail(rec, t0, "connect", f"connection failed: {type(err).__name__}: {err}")
        except HTTPException as err:
            return _fail(rec, t0, "http", f"malformed HTTP response: {type(err).__name__}: {err}")
        heard["last"] = STATE.last_data = time.perf_counter()
        rec["status"] = status = resp.status_code
        ctype = str(resp.get("content-type") or "").lower()
        if status != 200:
            body = resp.read()
            return _fail(rec, t0, "http", f"HTTP {status}: {_excerpt(body)}")
        if not stream:
            body = resp.read()
            rec["bytes"] = len(body)
            end = time.perf_counter()
            try:
                data = json.loads(body)
            except ValueError:
                return _fail(rec, t0, "http", f"the answer is not JSON: {_excerpt(body)}", end=end)
            rec["e2el_ms"] = (end - t0) * 1000.0
            if EMBEDDINGS:
                return _embedding(rec, t0, data, end)
            rec["prompt_tokens"], rec["output_tokens"] = usage_tokens(data)
            rec["tokens_from"] = "usage" if rec["output_tokens"] is not None else None
            if text is not None and isinstance(data, dict):
                text.append(chunk_text({"choices": data.get("choices")}))
            if rec["output_tokens"] is None:
                return _fail(rec, t0, "no_usage", "the answer has no usage.completion_tokens to count tokens")
            rec["ok"] = True
            return rec
        if "text/event-stream" not in ctype:
            body = resp.read()
            return _fail(rec, t0, "not_streamed", f"not streamed: the server answered {ctype or 'without a content type'}"
                         " instead of text/event-stream")
        done = finished = False  # [DONE] seen / a finish_reason seen: the answer ended, not the connection
        while True:
            line = resp.readline(b"\n")
            now = time.perf_counter()  # before any parsing: the time the line arrived
            if not line:
                break
            heard["last"] = STATE.last_data = now
            rec["bytes"] += len(line)
            chunk = parse_sse_line(line)
            if chunk is None:
                continue
            if chunk is DONE:
                done = True
                continue
            if "error" in chunk:
                problem = error_message(chunk)
                if problem:
                    return _fail(rec, t0, "stream", f"error event in the stream: {_excerpt(problem.encode())}",
                                 resp=resp)
            if chunk.get("usage"):
                p_tok, c_tok = usage_tokens(chunk)
                if c_tok is not None:
                    rec["prompt_tokens"], rec["output_tokens"] = p_tok, c_tok
            choices = chunk.get("choices")
            if not choices:
                continue
            if isinstance(choices[0], dict) and choices[0].get("finish_reason"):
                finished = True
            piece = chunk_text(chunk)
            if piece:
                if text is not None:
                    text.append(piece)
                if last is None:
                    rec["ttft_ms"] = (now - t0) * 1000.0
                else:
                    itl.append(round((now - last) * 1000.0, 3))
                last = now
                n_text += 1
        end = time.perf_counter()
        rec["chunks"] = n_text
        rec["e2el_ms"] = (end - t0) * 1000.0
        if not (done or finished):
            return _fail(rec, t0, "stream", f"the stream was cut off after {n_text} chunk(s) (no [DONE])", end=end)
        if n_text == 0:
            return _fail(rec, t0, "empty", "the stream carried no generated text", end=end)
        if rec["output_tokens"] is not None:
            rec["tokens_from"] = "usage"
        else:
            rec["output_tokens"], rec["tokens_from"] = n_text, "chunks"
        rec["ok"] = True
        return rec
    except GreenletExit:
        raise
    except TimeoutError:
        return _fail(rec, t0, "timeout", f"no data for the request timeout after {n_text} chunk(s)", resp=resp)
    except StreamFormatError as err:
        return _fail(rec, t0, "stream", str(err), resp=resp)
    except (OSError, HTTPException) as err:
        # geventhttpclient's HTTPParseError ("Incomplete response") and HTTPConnectionClosed are HTTPExceptions
        return _fail(rec, t0, "stream", f"the stream was cut off after {n_text} chunk(s) (connection lost: "
                     f"{type(err).__name__})", resp=resp)


def _embedding(rec: dict, t0: float, data, end: float) -> dict:
    """An embeddings answer: a `data` list of vectors; input tokens from usage, no output tokens."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list) or not data["data"]:
        return _fail(rec, t0, "http", "the answer has no 'data' list of embeddings", end=end)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    prompt = usage.get("prompt_tokens")
    rec.update(ok=True, output_tokens=0, prompt_tokens=prompt if isinstance(prompt, int) else None,
               tokens_from="usage" if isinstance(prompt, int) else None)
    return rec


def _fail(rec: dict, t0: float, kind: str, reason: str, resp=None, end: float | None = None) -> dict:
    rec["ok"] = False
    rec["error_kind"] = kind
    rec["error"] = reason
    if rec["e2el_ms"] is None:
        rec["e2el_ms"] = ((end or time.perf_counter()) - t0) * 1000.0
    rec["_close"] = True  # the connection may hold unread data: do not reuse it
    return rec


class LLMUser(User):
    """One simulated client: sends a request, reads the whole stream, sends the next (or waits for
    its due time in --qps mode)."""

    _pause = 0.0

    def wait_time(self):
        return self._pause

    def on_start(self):
        self.history: list[dict] = []  # --turns: this user's conversation so far
        self.turn = 0
        self.conversation = None
        self.http = self._client()
        self.headers = headers(PLAN["stream"])  # with OPENAI_API_KEY as a Bearer token when it is set
        self._warm_up()
        STATE.start(self.environment)  # after the warm-up: a --qps schedule starts when users are ready

    def _warm_up(self) -> None:
        """Open this user's connection with a GET /v1/models before the first measured request.

        Without it the first request of each user also pays the name lookup, the TCP connect and
        first-call costs in the client (about 30 ms measured on a small machine), which lands in
        TTFT as a client artifact. A failure here is not one: the real requests report it."""
        try:
            resp = self.http.get(MODELS_PATH, headers={k: v for k, v in self.headers.items() if k != "Content-Type"})
            resp.read()
        except Exception:  # noqa: BLE001 - only a warm-up; start over with a fresh connection
            self.http.close()
            self.http = self._client()

    def on_stop(self):
        self.http.close()

    def _client(self) -> HTTPClient:
        timeout = float(PLAN["request_timeout"])
        return HTTPClient.from_url(PLAN["url"], concurrency=1, connection_timeout=min(10.0, timeout),
                                   network_timeout=timeout)

    def _sleep(self, seconds: float) -> None:
        """Wait in Locust's interruptible state: a stop does not have to wait for it."""
        self._pause = max(0.0, seconds)
        try:
            self.wait()
        finally:
            self._pause = 0.0

    def _salt(self, seq: int) -> list[str]:
        """The words that make this request's prompt a prefix-cache miss ([] with --shared-prefix)."""
        if PLAN["shared_prefix"]:
            return []
        return MAKER.salt(PLAN["run_id"], WORKER, seq)  # words whose tokens are known: the count stays exact

    def _payload(self, seq: int) -> tuple[bytes, dict]:
        """The request's body, and what it asks for: `prompt_tokens` (as built; None for a dataset prompt
        the tokenizer did not count), `max_tokens`, `user` (its user message, for a chat session)."""
        max_tokens = OUTPUT_LENGTHS.sample(LENGTH_RNG) if OUTPUT_LENGTHS is not None else 64
        salt = self._salt(seq)
        messages = None
        if DATASET:
            row = DATASET[(seq - 1 + WORKER * 7919) % len(DATASET)]
            if OUTPUT_LENGTHS is None:
                max_tokens = row.get("output_tokens") or 64
            n = row.get("prompt_tokens")
            if "messages" in row:
                messages = [dict(m) for m in row["messages"]]
                if salt:
                    messages[0]["content"] = " ".join(salt) + " " + messages[0]["content"]
                prompt = messages[-1]["content"]
            else:
                prompt = " ".join([*salt, row["prompt"]]) if salt else row["prompt"]
            n = None if salt else n
        else:
            n = PROMPT_LENGTHS.sample(LENGTH_RNG)
            use_prefix = bool(MAKER.prefix) and LENGTH_RNG.random() < float(PLAN.get("shared_prefix_share") or 1.0)
            prompt = MAKER.make(n, salt, use_prefix)
        if EMBEDDINGS:
            body = {**({"model": PLAN["model"]} if PLAN.get("model") else {}), "input": prompt}
            return json.dumps(body).encode(), {"prompt_tokens": n, "max_tokens": None, "user": None}
        body = request_body(PLAN["api"], PLAN.get("model"), prompt, max_tokens=max_tokens,
                            stream=PLAN["stream"], ignore_eos=PLAN.get("ignore_eos", False))
        user = {"role": "user", "content": prompt}
        if messages is not None:
            body["messages"] = messages
        elif TURNS > 1:
            body["messages"] = [*self.history, user]  # the conversation so far, then this turn's question
        return json.dumps(body).encode(), {"prompt_tokens": n, "max_tokens": max_tokens, "user": user}

    @task
    def generate(self):
        if STATE.interrupted:  # no new request once interrupted: wait (interruptibly) to be stopped
            self._sleep(3600.0)
            return
        due_perf = None
        if STATE.schedule is not None:
            offset = STATE.schedule.next_due()
            if offset is None:  # the schedule is over: idle until Locust stops the run
                self._sleep(3600.0)
                return
            due_perf = STATE.t0_perf + offset
            if due_perf > time.perf_counter():
                self._sleep(due_perf - time.perf_counter())
        seq = STATE.next_seq()
        if TURNS > 1 and self.turn == 0:
            self.history, self.conversation = [], f"w{WORKER}-{seq}"
        payload, asked = self._payload(seq)
        record = {"id": f"w{WORKER}-{seq}", "worker": WORKER, "start": time.time(), "end": None,
                  "due": None, "lag_ms": None, "cancelled": False, "stream": PLAN["stream"],
                  "max_tokens": asked["max_tokens"]}
        if TURNS > 1:
            record.update(conversation=self.conversation, turn=self.turn + 1)
        answer: list[str] | None = [] if TURNS > 1 else None
        sent_perf = time.perf_counter()
        if due_perf is not None:
            record["lag_ms"] = round((sent_perf - due_perf) * 1000.0, 3)
            record["due"] = STATE.t0_wall + (due_perf - STATE.t0_perf)
        heard = {"last": sent_perf}
        if STATE.in_flight == 0:
            STATE.busy_since = sent_perf
        STATE.in_flight += 1
        try:
            result = measure(self.http, API_PATH, payload, self.headers, PLAN["stream"], heard, answer)
        except Exception as err:  # a bug in this file must show as failures, not as a spinning loop
            logging.exception("gpuops client error")
            result = {"ok": False, "error": f"gpuops client error: {type(err).__name__}: {err}",
                      "error_kind": "client", "status": None, "ttft_ms": None,
                      "e2el_ms": (time.perf_counter() - sent_perf) * 1000.0, "itl_ms": [],
                      "output_tokens": None, "prompt_tokens": None, "tokens_from": None, "chunks": 0, "bytes": 0,
                      "_close": True}
        except GreenletExit as stop:
            # stopped mid-request (the stop grace ran out, or the run was stopped early): kept, marked,
            # and left out of the statistics; `silent_ms` says how long it had heard nothing
            now = time.perf_counter()
            early = STATE.interrupted
            record.update(cancelled=True, ok=False, error_kind="cancelled", end=time.time(),
                          error="cut off when the run was stopped" if early
                          else "cut off at the end of the run (still in flight after the stop grace)",
                          cut="stop" if early else "end", e2el_ms=(now - sent_perf) * 1000.0,
                          silent_ms=round((now - heard["last"]) * 1000.0, 3))
            try:
                STATE.write(record)
            except Exception:  # the stop must go through whatever happens: Locust would keep the user running
                logging.exception("gpuops: could not record a cancelled request")
            raise stop
        finally:
            STATE.in_flight -= 1
        if result.pop("_close", False):
            self.http.close()
            self.http = self._client()
        if result.get("prompt_tokens") is None and result["ok"]:
            result["prompt_tokens"] = asked["prompt_tokens"]  # the server gave no usage: as built
        if TURNS > 1:
            # the next turn carries this one; a failed turn (or the last) ends the conversation
            self.history += [asked["user"], {"role": "assistant", "content": "".join(answer or [])}]
            self.turn = self.turn + 1 if result["ok"] and self.turn + 1 < TURNS else 0
        record.update(result)
        record["end"] = record["start"] + record["e2el_ms"] / 1000.0
        if STATE.interrupted:
            # in flight at Ctrl-C: Locust's report writing stalled this process, so its times are wrong
            record.update(cancelled=True, ok=False, error="in flight when the run was stopped",
                          error_kind="cancelled", cut="stop")
            STATE.write(record)
            return
        STATE.write(record)
        self._report(record)
        if record["error_kind"] in ("connect", "client"):
            self._sleep(CONNECT_BACKOFF_S)

    def _report(self, r: dict) -> None:
        fire = self.environment.events.request.fire
        exc = None if r["ok"] else RequestError(reason_key(r["error"]))
        fire(request_type="POST", name=API_PATH, response_time=r["e2el_ms"], response_length=r["bytes"],
             exception=exc, context={})
        if r["ok"] and r["ttft_ms"] is not None:
            fire(request_type="LLM", name="TTFT", response_time=r["ttft_ms"], response_length=0,
                 exception=None, context={})
            tpot = tpot_ms(r["e2el_ms"], r["ttft_ms"], r["output_tokens"])
            if tpot is not None:
                fire(request_type="LLM", name="TPOT", response_time=tpot, response_length=0,
                     exception=None, context={})


def _interrupt(_signum, _frame):
    """SIGINT (from gpuops: Ctrl-C, a lost or stalled server): stop now, once."""
    if STATE.interrupted:
        return  # already stopping: a second KeyboardInterrupt would break Locust's report writing
    STATE.interrupted = STATE.stopping = True
    if STATE.environment is not None:
        # whatever is in flight is recorded as cancelled anyway (see generate): waiting for it up to
        # --stop-timeout would only hold the stop back, for as long as 30 s when the server hangs
        STATE.environment.stop_timeout = 0
    raise KeyboardInterrupt  # what Locust expects: it then writes its reports and quits


signal.signal(signal.SIGINT, _interrupt)


@events.init.add_listener
def _init(environment, **_kw):
    STATE.environment = environment
    # gevent's loop caches "now" and has not run since Locust's imports began: without this, the
    # --run-time timer Locust sets next is counted from that stale time and fires a quarter second
    # early (measured), cutting off the last requests an open-loop schedule made due
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _running(environment, **_kw):
    STATE.stopping = False  # the web UI can start a new test after a stop
    if STATE.test_start_perf is None:
        STATE.test_start_perf = time.perf_counter()


@events.test_stopping.add_listener
def _stopping(environment, **_kw):
    STATE.stopping = True


@events.quitting.add_listener
def _quitting(environment, **_kw):
    STATE.stopping = True


@events.quit.add_listener
def _close_files(**_kw):
    # `quit`, not `quitting`: Locust fires `quitting` before it stops the users, whose last
    # (cancelled) records are still to be written
    if STATE._records is not None:
        STATE._records.close()
