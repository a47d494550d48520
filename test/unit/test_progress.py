"""Progress bars off a terminal: a plain line every few seconds, never carriage-return updates."""

import io
import time

from kv_vla_ros.progress import LOG_INTERVAL_S, progress_bar


def test_off_a_terminal_a_bar_writes_a_few_plain_lines():
    log = io.StringIO()  # not a terminal, like `kv-vla ... > log 2>&1`
    for _ in progress_bar(range(200), desc="episodes", file=log, mininterval=0.1):
        time.sleep(0.002)  # ~0.4 s: a handful of lines at 0.1 s, not one per step
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12, lines
    assert lines[-1].startswith("episodes: 100%") and "200/200" in lines[-1]
    assert LOG_INTERVAL_S >= 2.0  # the default spacing of those lines in a log


def test_a_disabled_bar_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(10), file=log, disable=True):
        pass
    assert log.getvalue() == ""
