"""The demo's HTTP routes (Starlette): health, models, completions, chat, profilers, workers.

    app = build_app(settings, console, pool)        # then served by uvicorn in gpuops.demo.server

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the one model, OpenAI's list shape
    POST /v1/completions         OpenAI text completion, streamed (SSE) or whole
    POST /v1/chat/completions    OpenAI chat completion, streamed (SSE) or whole
    POST /v1/embeddings          OpenAI embeddings (a small fixed-size vector per input)
    POST /tokenize               vLLM's shape: {"prompt"} or {"messages"} -> {"count", "tokens", "max_model_len"}
    GET  /profile                Fireworks-style profiler trigger
    POST /start_profile          vLLM-style profiler (only with VLLM_TORCH_PROFILER_DIR)
    POST /stop_profile
    GET  /v1/demo/workers        the worker pids (for tests)

Errors are JSON: OpenAI's {"error": {...}} for API errors, {"detail": ...} for unknown routes (as FastAPI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpuops.demo import generation, protocol
from gpuops.demo.console import Console
from gpuops.demo.faults import ErrorSchedule
from gpuops.demo.profilers import FireworksProfiler, ProfilerConflict, VllmProfiler, parse_profile_query
from gpuops.demo.protocol import BadRequest
from gpuops.demo.settings import Settings
from gpuops.demo.workers import WorkerPool


def _bad_request(err: BadRequest) -> JSONResponse:
    return JSONResponse(protocol.error_body(err.message, "BadRequestError", 400, err.param), status_code=400)


def _conflict(err: ProfilerConflict) -> JSONResponse:
    return JSONResponse(protocol.error_body(str(err), "ConflictError", 409), status_code=409)


def build_app(settings: Settings, console: Console, pool: WorkerPool) -> Starlette:
    errors = ErrorSchedule(settings.error_every)
    fireworks = FireworksProfiler(console, settings.profile_delay)
    vllm = VllmProfiler(console, settings.vllm_profiler_dir) if settings.vllm_profiler_dir else None
    ttft, itl = settings.ttft_ms / 1000, settings.itl_ms / 1000
    per_request = settings.ttft_per_request_ms / 1000
    active = [0]  # generation requests in flight: with --ttft-per-request-ms, each one slows the others' TTFT
    on_token = vllm.note_token if vllm else (lambda: None)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model, "object": "model", "created": int(time.time()), "owned_by": "gpuops-demo",
             "max_model_len": protocol.MAX_MODEL_LEN}]})

    async def generate(request: Request, kind: str) -> Response:
        start = time.monotonic()  # the request has arrived: TTFT counts from here
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _bad_request(BadRequest(f"the request body is not valid JSON: {err}"))
        try:
            req = protocol.parse_request(kind, body, settings.model)
        except BadRequest as err:
            return _bad_request(err)
        if errors.next_fails():
            message = (f"simulated internal server error (request {errors.count}; "
                       f"the demo fails every {settings.error_every}th generation request)")
            return JSONResponse(protocol.error_body(message, "InternalServerError", 500), status_code=500)
        first = ttft + per_request * active[0]  # the requests already in flight when this one arrived
        if req.stream and not settings.no_stream_support:
            return StreamingResponse(_counted(generation.stream_events(req, start, first, itl, on_token)),
                                     media_type="text/event-stream")
        active[0] += 1
        try:
            return JSONResponse(await generation.complete(req, start, first, itl, on_token))
        finally:
            active[0] -= 1

    async def _counted(events):
        active[0] += 1
        try:
            async for event in events:
                yield event
        finally:
            active[0] -= 1

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def tokenize(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or ("prompt" not in body and "messages" not in body):
                raise BadRequest("'prompt' or 'messages' is required", "prompt")
            count = protocol.parse_request("chat" if "messages" in body else "completion",
                                           {**body, "max_tokens": 1}, settings.model).prompt_tokens
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _bad_request(BadRequest(f"the request body is not valid JSON: {err}"))
        except BadRequest as err:
            return _bad_request(err)
        return JSONResponse({"count": count, "max_model_len": protocol.MAX_MODEL_LEN,
                             "tokens": list(range(count))})

    async def embeddings(request: Request) -> Response:
        start = time.monotonic()
        try:
            body = json.loads(await request.body())
            inputs = body.get("input") if isinstance(body, dict) else None
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
                raise BadRequest("'input' must be a string or a list of strings", "input")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _bad_request(BadRequest(f"the request body is not valid JSON: {err}"))
        except BadRequest as err:
            return _bad_request(err)
        await generation.sleep_until(start + ttft)  # one forward pass: the time to a first token
        tokens = sum(protocol.count_words(x) for x in inputs)
        data = [{"object": "embedding", "index": i, "embedding": [round(((len(x) + k) % 7) / 7, 3) for k in range(8)]}
                for i, x in enumerate(inputs)]
        return JSONResponse({"object": "list", "data": data, "model": body.get("model") or settings.model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def profile(request: Request) -> Response:
        try:
            req = parse_profile_query(request.query_params)
            fireworks.start(req)
        except BadRequest as err:
            return _bad_request(err)
        except ProfilerConflict as err:
            return _conflict(err)
        return JSONResponse({"status": "profiling started", "dir": req.dir, "num_steps": req.num_steps})

    async def start_profile(request: Request) -> Response:
        try:
            vllm.start()
        except ProfilerConflict as err:
            return _conflict(err)
        return Response(status_code=200)

    async def stop_profile(request: Request) -> Response:
        try:
            await asyncio.to_thread(vllm.stop)
        except ProfilerConflict as err:
            return _conflict(err)
        return Response(status_code=200)

    async def workers(request: Request) -> Response:
        return JSONResponse(pool.pids)

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/profile", profile),
        Route("/v1/demo/workers", workers),
    ]
    if vllm is not None:  # like vLLM: without the variable these routes do not exist
        routes += [Route("/start_profile", start_profile, methods=["POST"]),
                   Route("/stop_profile", stop_profile, methods=["POST"])]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        # uvicorn's graceful shutdown (SIGTERM, SIGINT, a failed bind) runs this; a SIGKILL does not,
        # and then the workers live on for gpuops to find.
        await asyncio.to_thread(pool.stop)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
