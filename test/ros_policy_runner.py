"""kv_vla_node with a real VLASession made slow and faulty on purpose (run as a script by the tests).

- every step sleeps KV_VLA_TEST_STEP_DELAY_S (inference slower than the control period);
- an instruction starting with "emit nan" makes the last action of every chunk NaN (the package's
  own VLA: its only action; π0: the rows before it stay finite, and must not be published either);
- an instruction starting with "raise" makes every step raise;
- with KV_VLA_TEST_RECORD set, every step appends the mean pixel of each of its camera frames to
  that file (one JSON list per line): which frames an inference paired;
- with KV_VLA_TEST_RECORD_GUIDES set, every step appends the real-time chunking guide it got to
  that file (one JSON line: null, or the guide's target rows and weights).
"""

import json
import os
import sys
import time

import numpy as np

from kv_vla_ros.ros.node.kv_vla_node import main
from kv_vla_ros.vla import VLASession


class ScriptedSession(VLASession):
    delay_s = float(os.environ.get("KV_VLA_TEST_STEP_DELAY_S", "0"))
    record = os.environ.get("KV_VLA_TEST_RECORD")
    record_guides = os.environ.get("KV_VLA_TEST_RECORD_GUIDES")

    def step_action_chunk(self, images, state=None, **kwargs):
        time.sleep(self.delay_s)
        if self.record_guides:
            guide = kwargs.get("guide")
            with open(self.record_guides, "a") as f:
                f.write(json.dumps(None if guide is None else {"target": guide.target.tolist(),
                                                               "weights": guide.weights.tolist()}) + "\n")
        if self.record:
            with open(self.record, "a") as f:
                f.write(json.dumps([round(float(np.mean(i)), 1) for i in images]) + "\n")
        chunk = np.array(super().step_action_chunk(images, state, **kwargs), dtype=np.float32)
        if self.instruction.startswith("emit nan"):
            chunk[-1] = np.nan
        if self.instruction.startswith("raise"):
            raise RuntimeError("injected inference failure")
        return chunk


if __name__ == "__main__":
    sys.exit(main(session_factory=ScriptedSession))
