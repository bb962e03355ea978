"""Sum a server profile into the functions where its time goes.

py-spy's raw format is one sampled stack per line, ``frame;frame;... count``,
outermost frame first. A function's *self* share counts the samples where it
was the innermost frame; its *total* share those where it was anywhere on the
stack (once per stack, so recursion is not counted twice).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

__all__ = ["summarise", "top_functions"]

_LINE_NUMBER = re.compile(r":\d+\)$")
_SITE = re.compile(r"^.*?/(site-packages|lib/python3\.\d+)/")


def _frame_name(frame: str) -> str:
    """Drop the line number and the install prefix: ``send (chat/send.py)``."""
    frame = _LINE_NUMBER.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    where = _SITE.sub("", where)
    if "/nextstar_rt/" in where:
        where = "nextstar_rt/" + where.split("/nextstar_rt/", 1)[1]
    return f"{name} ({where}" if where else name


def top_functions(lines: list[str], limit: int = 25) -> dict[str, Any]:
    """Return the samples and the top ``limit`` functions by self and total,
    over every thread and over the event loop's thread alone."""
    main = [line for line in lines if _is_main_thread(line)]
    summary = _count(lines, limit)
    summary["main_thread"] = _count(main, limit)
    summary["main_thread"]["lines"] = _lines(main, limit)
    return summary


def _lines(lines: list[str], limit: int) -> list[dict[str, Any]]:
    """Return the source lines where the innermost frame was sampled most."""
    counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        innermost = stack.rsplit(";", 1)[-1].strip()
        name, _, where = innermost.partition(" (")
        counts[f"{name} ({_SITE.sub('', where)}"] += int(count_text)
        samples += int(count_text)
    return [
        {
            "line": name,
            "samples": n,
            "percent": round(100.0 * n / samples, 2) if samples else 0.0,
        }
        for name, n in counts.most_common(limit)
    ]


def _is_main_thread(line: str) -> bool:
    # The event loop runs in the main thread, whose stacks start from the
    # interpreter's entry point; worker threads start in threading.
    return any("_run_module_as_main" in frame for frame in line.split(";", 2)[:2])


def _count(lines: list[str], limit: int) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        # py-spy may lead with the process and thread; they are not code.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {
                "function": name,
                "samples": n,
                "percent": round(100.0 * n / samples, 2) if samples else 0.0,
            }
            for name, n in counter.most_common(limit)
        ]

    return {"samples": samples, "self": share(own), "total": share(total)}


def summarise(path: Path, kind: str, limit: int = 25) -> dict[str, Any]:
    """Summarise the profile at ``path`` and write the top list beside it.

    Only py-spy's raw format is summed here; a pyinstrument speedscope file
    is kept as it is, to open in speedscope.app.
    """
    result: dict[str, Any] = {"kind": kind, "file": path.name}
    if kind != "py-spy" or not path.exists():
        result["summary"] = None
        return result
    summary = top_functions(path.read_text(errors="replace").splitlines(), limit)
    result["summary"] = summary
    main = summary["main_thread"]
    heading = (
        f"{summary['samples']} samples of {path.name}, {main['samples']} "
        "of them in the event loop's (main) thread"
    )
    lines = [heading, ""]
    for title, part in (("event loop thread", main), ("all threads", summary)):
        lines += [f"{title}: self %  function"]
        lines += [f"{row['percent']:6.2f}  {row['function']}" for row in part["self"]]
        lines += ["", f"{title}: total %  function"]
        lines += [f"{row['percent']:6.2f}  {row['function']}" for row in part["total"]]
        lines += [""]
    lines += ["event loop thread: self % by source line"]
    lines += [f"{row['percent']:6.2f}  {row['line']}" for row in main["lines"]]
    top = path.with_name(path.name.replace(".pyspy.txt", ".top.txt"))
    top.write_text("\n".join(lines) + "\n")
    result["top_file"] = top.name
    return result
