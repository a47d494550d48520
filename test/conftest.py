"""Test-wide settings: one torch thread. The tests run tiny models, where a second thread only adds
contention on CI's 2 cores (measured: steps of a tiny model up to ~20x slower on a busy machine).

Layout: ``unit/`` runs in-process in seconds; ``integration/`` starts nodes over DDS, Ray runtimes,
trainings and closed loops. Markers (setup.cfg) from one table, `MARKS` below, by file: ``ros``
(real nodes over DDS in other processes), ``ray`` (Ray runtimes or clusters), ``slow`` (tens of
seconds or more on CI's 2 cores, measured). ``pytest -m "not slow"`` is the quick loop."""

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# Ray in tests (runtimes, a two-node test cluster) stays on the loopback address: read by Ray at
# import and inherited by its processes.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(__file__))  # shared helpers (cache_models, ros_helpers)


# file -> markers (the ``slow`` ones measured over 20 s per file on the 2-core machine)
MARKS = {
    "test_arm.py": ("slow",),
    "test_arm_eval.py": ("ray", "slow"),
    "test_arm_model.py": ("ros", "slow"),
    "test_arm_ros.py": ("ros", "slow"),
    "test_bags.py": ("slow",),
    "test_bags_live.py": ("ros",),
    "test_bench_cache.py": ("slow",),
    "test_memory_training.py": ("slow",),
    "test_parallel.py": ("ray", "slow"),
    "test_parallel_cluster.py": ("ray",),
    "test_parallel_local.py": ("ray",),
    "test_pi0_from_bags.py": ("slow",),
    "test_real_recordings.py": ("slow",),
    "test_ros_arm.py": ("ros", "slow"),
    "test_ros_closed_loop.py": ("ros", "slow"),
    "test_ros_forward_command.py": ("ros",),
    "test_ros_node_cli.py": ("ros", "slow"),
    "test_ros_node_scripts.py": ("ros",),
    "test_ros_package.py": ("ros",),
    "test_ros_pi0_node.py": ("ros", "slow"),
    "test_ros_policy_node.py": ("ros", "slow"),
    "test_ros_shutdown.py": ("ros", "slow"),
    "test_ros_soak.py": ("ros", "slow"),
    "test_ros_user.py": ("ros", "slow"),
    "test_settings.py": ("ros",),
    "test_train_parallel.py": ("ray", "slow"),
}


def pytest_collection_modifyitems(items):
    for item in items:
        for mark in MARKS.get(Path(str(item.fspath)).name, ()):
            item.add_marker(getattr(pytest.mark, mark))
