"""Simulated decoding: which words come out and when.

    >>> "".join(token_text(i) for i in range(4))
    ' The sky is blue'
    >>> token_deadline(start=10.0, index=2, ttft=0.05, itl=0.02)   # third token: ttft + 2 * itl
    10.09

Token i is due at start + ttft + i * itl on the monotonic clock. Sleeping until each absolute deadline
(not for a fixed delay after the last one) keeps scheduling latency from adding up over a long answer.
Every answer is exactly max_tokens tokens long and ends with finish_reason "length".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from gpuops.demo import protocol
from gpuops.demo.protocol import GenerationRequest

WORDS = ("The", "sky", "is", "blue", "because", "air", "molecules", "scatter", "short", "wavelengths", "of",
         "sunlight", "more", "than", "long", "ones,", "so", "blue", "light", "reaches", "our", "eyes", "from",
         "every", "direction.")
FINISH = "length"  # the answer always runs to max_tokens


def token_text(index: int) -> str:
    return " " + WORDS[index % len(WORDS)]


def answer_text(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


def token_deadline(start: float, index: int, ttft: float, itl: float) -> float:
    return round(start + ttft + index * itl, 9)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


async def sleep_until(deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
    delay = deadline - clock()
    if delay > 0:
        await asyncio.sleep(delay)


async def stream_events(req: GenerationRequest, start: float, ttft: float, itl: float,
                        on_token: Callable[[], None] = lambda: None,
                        wait: Callable[[float], Awaitable[None]] = sleep_until) -> AsyncIterator[str]:
    """The SSE body of a streamed answer: [role chunk,] one chunk per token on schedule, [usage,] [DONE]."""
    req_id, created = new_id(req.kind), int(time.time())
    if req.kind == "chat":
        yield protocol.sse(protocol.role_chunk(req, req_id, created))
    for i in range(req.max_tokens):
        await wait(token_deadline(start, i, ttft, itl))
        on_token()
        finish = FINISH if i == req.max_tokens - 1 else None
        yield protocol.sse(protocol.content_chunk(req, req_id, created, token_text(i), finish))
    if req.include_usage:
        yield protocol.sse(protocol.usage_chunk(req, req_id, created, req.max_tokens))
    yield protocol.DONE


async def complete(req: GenerationRequest, start: float, ttft: float, itl: float,
                   on_token: Callable[[], None] = lambda: None,
                   wait: Callable[[float], Awaitable[None]] = sleep_until) -> dict:
    """The whole answer at once, when its last token would have streamed."""
    await wait(token_deadline(start, req.max_tokens - 1, ttft, itl))
    for _ in range(req.max_tokens):
        on_token()
    return protocol.full_response(req, new_id(req.kind), int(time.time()), answer_text(req.max_tokens), FINISH,
                                  req.max_tokens)
