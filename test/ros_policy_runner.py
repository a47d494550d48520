"""kv_vla_node with a real VLASession made slow and faulty on purpose (run as a script by the tests).

- every step sleeps KV_VLA_TEST_STEP_DELAY_S (inference slower than the control period);
- an instruction starting with "emit nan" makes every step return NaN;
- an instruction starting with "raise" makes every step raise.
"""

import os
import sys
import time

import numpy as np

from kv_vla_ros.ros.policy_node import main
from kv_vla_ros.vla import VLASession


class ScriptedSession(VLASession):
    delay_s = float(os.environ.get("KV_VLA_TEST_STEP_DELAY_S", "0"))

    def step(self, image, state=None):
        time.sleep(self.delay_s)
        action = super().step(image, state)
        if self.instruction.startswith("emit nan"):
            return np.full_like(action, np.nan, dtype=np.float32)
        if self.instruction.startswith("raise"):
            raise RuntimeError("injected inference failure")
        return action


if __name__ == "__main__":
    sys.exit(main(session_factory=ScriptedSession))
