"""OtherLoad: the CPU other processes use beside a measurement (benchmarks record it with their
timings; the load average cannot tell a benchmark's own threads from a neighbour's)."""

import subprocess
import sys
import time

import pytest

from kv_vla_ros.machine_load import OtherLoad


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_neighbour_counts_and_the_measured_processes_do_not():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # the interpreter is up and spinning
        beside, ours = OtherLoad(), OtherLoad([busy.pid])
        time.sleep(1.5)
        other, without = beside.cores(), ours.cores()  # the same 1.5 s, read back to back
        # the spinning process is somebody else's to `beside` (about one core more) and not to `ours`;
        # compared with each other, not with 0, so that the machine's other work cancels out
        assert other - without > 0.5, (other, without)
    finally:
        busy.kill()
        busy.wait()
