"""The closed-loop grid on a two-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this
machine, one CPU each, so the two workers land on different nodes) equals the in-process run."""

from __future__ import annotations

import pytest
import torch

from kv_vla_ros.eval.grid import evaluate_grid
from kv_vla_ros.parallel.runner import RunnerConfig

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 4096}


def test_two_node_cluster_gives_the_sequential_results(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.sim import eval_seeds
    from kv_vla_ros.vla import VLAConfig, VLAModel

    torch.manual_seed(1)
    path = str(VLAModel(VLAConfig(backbone=dict(TINY), vision_hidden=16, max_instruction_tokens=8)).eval()
               .save_pretrained(tmp_path / "tiny"))
    model = VLAModel.from_pretrained(path)
    parsed = [(s, *parse_spec(s, model.config.cache)) for s in ("full", "window:budget_tokens=100")]
    tasks, seeds = ["MiniGrid-MemoryS7-v0"], eval_seeds(4, 50)
    want, _ = evaluate_grid(model, path, tasks, parsed, seeds, 6, RunnerConfig(workers=1, progress=False))
    node = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "node_ip_address": "127.0.0.1"}
    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    address = cluster.address
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=address)
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # loopback only (conftest)
        ray.shutdown()
        got, how = evaluate_grid(model, path, tasks, parsed, seeds, 6,
                                 RunnerConfig(workers=2, ray_address=address, progress=False))
        assert not ray.is_initialized()  # the runner attached, then let go of the cluster
    finally:
        cluster.shutdown()
    assert how["nodes"] == 2 and how["workers"] == 2 and how["ray_address"] == address
    assert [r["per_episode"] for r in got] == [r["per_episode"] for r in want]
    assert [r["mean_tokens_held"] for r in got] == [r["mean_tokens_held"] for r in want]
