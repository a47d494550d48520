"""kv_vla_node whose every inference takes ``KV_VLA_EXTRA_DELAY_MS`` longer: what a slower model (or a
busier GPU) does to the control loop, without a bigger model (`kv-vla bench ros --extra-delay-ms`).
Run as ``python -m kv_vla_ros.bench.delayed_node --ros-args ...``; the session is the real one."""

from __future__ import annotations

import os
import sys
import time

from kv_vla_ros.ros.node.kv_vla_node import main
from kv_vla_ros.vla import VLASession


class DelayedSession(VLASession):
    delay_s = float(os.environ.get("KV_VLA_EXTRA_DELAY_MS", "0")) / 1e3

    def step_action_chunk(self, images, state=None, **kwargs):
        chunk = super().step_action_chunk(images, state, **kwargs)
        time.sleep(self.delay_s)
        return chunk


if __name__ == "__main__":
    sys.exit(main(session_factory=DelayedSession))
