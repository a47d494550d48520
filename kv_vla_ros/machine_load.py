"""How busy the machine was with other work around a measurement (Linux ``/proc``; standard library
only, importable from every tier): a timing taken beside other jobs is not the code's, so benchmarks
record this with their figures. The load average cannot say it: it counts the measurement's own
threads (a 2-thread benchmark alone on 2 cores shows a load of 2)."""

from __future__ import annotations

import os
from pathlib import Path


class OtherLoad:
    """CPU cores busy with processes other than ``pids`` since the last `cores()` call (from
    /proc/stat and /proc/<pid>/stat: every thread of those processes is theirs): a soak or a benchmark
    on a shared machine says how busy it was around it, so that a timing can be read against the
    load beside it. Off Linux (no /proc) `cores()` is NaN."""

    def __init__(self, pids: list[int] | None = None):
        self.pids = list(pids) if pids is not None else [os.getpid()]
        try:
            self._last = self._read()
        except OSError:
            self._last = None

    def _read(self) -> tuple[float, float, float]:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        total, idle = sum(fields[:8]), fields[3] + fields[4]  # user..steal; idle + iowait
        ours = 0.0
        for pid in self.pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ours += float(stat[11]) + float(stat[12])  # utime + stime (clock ticks, as /proc/stat)
            except (OSError, IndexError):
                pass
        return total, idle, ours

    def cores(self) -> float:
        if self._last is None:
            return float("nan")
        (total, idle, ours), (total0, idle0, ours0) = self._read(), self._last
        self._last = (total, idle, ours)
        span = total - total0
        if span <= 0:
            return 0.0
        ncpu = max(1, len(os.sched_getaffinity(0)))
        return max(0.0, ((total - idle) - (total0 - idle0) - (ours - ours0)) / span * ncpu)


__all__ = ["OtherLoad"]
