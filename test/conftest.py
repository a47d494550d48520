"""Test-wide settings: one torch thread. The tests run tiny models, where a second thread only adds
contention on CI's 2 cores (measured: steps of a tiny model up to ~20x slower on a busy machine)."""

import os
import sys

import torch

torch.set_num_threads(1)
# Ray in tests (runtimes, a two-node test cluster) stays on the loopback address: read by Ray at
# import and inherited by its processes.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(__file__))  # shared helpers (cache_models, ros_helpers)
