"""Progress bars for long jobs, the same for every tool: tqdm on a terminal; off a terminal (a log
file, a pipe, CI) one plain line every `LOG_INTERVAL_S` seconds instead of a carriage-return update
per step (``kv-vla bench eval-scaling > log 2>&1`` wrote hundreds of them).

Outside the tiers (`kv_vla_ros.tiers.FOUNDATION`): any tier may import it; it imports nothing of
the package.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 5.0


class _Lines:
    """A stream for tqdm off a terminal: each refresh becomes one line (tqdm writes ``"\\r" + bar``
    and clears with spaces, which are dropped)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; off one, a line at most every `LOG_INTERVAL_S`
    seconds (and the last state when the bar closes, if ``leave``)."""
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("ncols", 100)
    return tqdm(iterable, file=_Lines(stream), **kwargs)


__all__ = ["progress_bar", "LOG_INTERVAL_S"]
