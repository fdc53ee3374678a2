"""Text for people from the probes' results: what `inv smoke` and `inv profile` print.

    for line in smoke_lines(result):          # result: gpuops.probes.smoke.SmokeResult
        out.say(line)
    for line in profile_lines(result, top=10):  # result: gpuops.probes.profile.ProfileResult
        out.say(line)

Pure: results in, lines out (the same results, as data, are the --json documents).
"""

from __future__ import annotations

import textwrap

WRAP = 100


def _wrapped(text: str, width: int = WRAP) -> list[str]:
    """Answer text indented and wrapped; the model's own line breaks are kept."""
    return [f"  {part}" for line in text.splitlines() for part in (textwrap.wrap(line, width) or [""])]


def smoke_lines(result) -> list[str]:
    """The full report of one smoke request: where it went, the prompt, the answer, the numbers."""
    from gpuops.probes.smoke import STATS_ENGINES

    if result.engine in STATS_ENGINES:
        return [f"GET {result.url}{result.endpoint}", result.text, *[f"  {d}" for d in result.details],
                f"answered in {result.total_s:.2f} s"]
    mode = "stream" if result.stream else "no stream"
    lines = [f"POST {result.url}{result.endpoint}  (model {result.model or 'not named'}, {mode})"]
    if result.prompt is not None:
        lines.append(f"prompt: {result.prompt}")
    if result.reasoning:
        lines.append("reasoning:")
        lines += _wrapped(result.reasoning.strip())
    lines.append("answer:")
    lines += _wrapped(result.text.strip() or "(empty)")
    tail = f", finish: {result.finish_reason}" if result.finish_reason else ""
    source = {"usage": "; tokens counted by the server", "chunks": "; tokens counted as streamed chunks (no usage)"}
    lines.append(f"{result.stats()}{tail}{source.get(result.tokens_from, '')}")
    return lines


def profile_lines(result, top: int = 10) -> list[str]:
    """What `inv profile` prints after the capture: files, how to open them, the summary."""
    from gpuops.probes import traces
    from gpuops.probes.profile import LARGE_TRACE_BYTES, PERFETTO_URL, format_size, shown

    total = result.total_bytes
    lines = []
    if result.load:
        lines.append(result.load.describe())
    if result.source_dir:
        lines.append(f"copied from the server's profiler folder {shown(result.source_dir)}")
    lines.append(f"trace files ({len(result.files)}, {format_size(total)}) in {shown(result.out_dir)}:")
    for path, size in result.files:
        lines.append(f"  {format_size(size):>10}  {path.relative_to(result.out_dir)}")
    lines.append(f"open in Perfetto: {PERFETTO_URL} -> 'Open trace file' (or drop a file on the page); "
                 ".json.gz files open as they are")
    if total > LARGE_TRACE_BYTES:
        lines.append("  large traces: run `trace_processor --httpd FILE` and open ui.perfetto.dev, which then uses it")
    lines += [f"note: {n}" for n in result.notes]
    lines += [f"could not summarize: {u}" for u in result.unreadable]
    if result.summary is not None:
        lines += traces.format_summary(result.summary, top=top)
    return lines
