"""One source of truth for every setting: the field metadata of `CacheConfig` and `NodeSettings`
(help, bounds, when a change applies) says what the running session really does, and the ROS
descriptors, the ``--cache`` help, config/*.yaml and docs/ros.md's table are generated from it."""

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from kv_vla_ros.cache import CacheConfig
from kv_vla_ros.cache.settings import FIXED, LIVE, NEXT_EPISODE, parse_setting, setting, settings_of
from kv_vla_ros.ros.node.param_specs import NODE_PARAMS, NodeSettings, all_param_specs
from kv_vla_ros.vla import DEFAULT_MODEL_PATH, VLAModel, VLASession

ROOT = Path(__file__).resolve().parents[2]
CHANGED = {"eviction": "sink_window", "recent_chunks": 2, "budget_tokens": 80, "gate_threshold": 0.3,
           "summarize": True, "summary_threshold": 0.5, "layer_budgets": [80, 64, 72, 88], "seed": 7,
           "static": True, "chunk_size": 6, "sink_tokens": 12}


def _running_session():
    model = VLAModel.from_pretrained(DEFAULT_MODEL_PATH)
    session = VLASession(model, model.config.cache.replace(eviction="random", budget_tokens=96))
    session.reset("go to the key")
    for seed in range(3):
        session.step(np.random.default_rng(seed).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    return session


@pytest.mark.parametrize("info", settings_of(CacheConfig), ids=lambda info: info.name)
def test_each_cache_field_applies_when_its_metadata_says(info):
    """Live: applied to the running cache at once; next episode: held as pending, applied at the
    next reset; fixed by the checkpoint: refused naming the parameter."""
    session = _running_session()
    cfg = session.cache_config.replace(**{info.name: CHANGED[info.name]})
    if info.applies == FIXED:
        with pytest.raises(ValueError, match=f"cache.{info.name}"):
            session.set_cache_config(cfg)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "applies at the next reset()"
        live = session.set_cache_config(cfg)
    if info.name == "seed":  # accepted by the running cache, but the random eviction reseeds at reset
        assert session._cache.eviction.generator.initial_seed() == 0
        session.reset("go to the key")
        assert session._cache.eviction.generator.initial_seed() == 7 and info.applies == NEXT_EPISODE
        return
    assert live is (info.applies == LIVE), (info.name, live, info.applies)
    assert (session.pending_cache_config is not None) is (info.applies == NEXT_EPISODE)


def test_a_switch_to_or_from_window_waits_for_the_next_episode_as_eviction_says():
    session = _running_session()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert session.set_cache_config(session.cache_config.replace(eviction="window", budget_tokens=80)) is False
    assert "window" in [i for i in settings_of(CacheConfig) if i.name == "eviction"][0].when


def test_every_field_has_help_and_a_parameter_kind():
    specs = all_param_specs()
    assert len(specs) == len(settings_of(NodeSettings)) + len(settings_of(CacheConfig))
    assert all(spec.description for spec in specs)
    assert [spec.name for spec in NODE_PARAMS][:2] == ["model_path", "device"]
    assert {"action.min", "twist.linear_index"} <= {spec.name for spec in NODE_PARAMS}

    @dataclasses.dataclass
    class Bare:
        x: int = 0

    with pytest.raises(ValueError, match="Bare.x: no help text"):
        settings_of(Bare)

    @dataclasses.dataclass
    class Ranged:
        x: int = setting(1, "a number", bounds=(1, 5))
        ratio: float | None = setting(None, "optional", bounds=(0.0, 1.0))

    x, ratio = settings_of(Ranged)
    assert parse_setting(x, " 3 ") == 3 and parse_setting(ratio, "none") is None
    with pytest.raises(ValueError, match=r"x: must be in \[1, 5\], got 9"):
        parse_setting(x, "9")
    with pytest.raises(ValueError, match="x: expected int, got 'three'"):
        parse_setting(x, "three")


def test_cache_spec_help_lists_every_field_with_its_help():
    env = {**os.environ, "COLUMNS": "100000"}  # argparse wraps (and breaks words at hyphens) otherwise
    proc = subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", "eval", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    text = proc.stdout
    for info in settings_of(CacheConfig):
        assert f"{info.name} ({info.annotation}): {info.help}" in text, info.name


def test_kv_vla_yaml_states_the_shipped_checkpoints_cache_and_every_parameter():
    params = yaml.safe_load((ROOT / "config" / "kv_vla.yaml").read_text())["/**/kv_vla_node"]["ros__parameters"]
    shipped = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())["cache"]
    assert list(params) == [spec.name for spec in all_param_specs()]
    for name, value in shipped.items():
        assert params[f"cache.{name}"] == (value if value is not None else ([-1] if name == "layer_budgets" else -1))


def test_committed_yaml_and_docs_are_what_the_metadata_generates(tmp_path):
    """Fails when config/*.yaml, docs/ros.md's table or the README's tier table were edited by hand
    or a setting changed without `python scripts/generate_docs.py`."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ros_descriptors_say_when_a_change_applies():
    pytest.importorskip("rclpy")
    from kv_vla_ros.ros.node.param_descriptors import descriptor

    specs = {spec.name: spec for spec in all_param_specs()}
    assert descriptor(specs["cache.chunk_size"]).read_only
    assert "fixed by the checkpoint" in descriptor(specs["cache.chunk_size"]).description
    assert "applies at the next episode" in descriptor(specs["cache.static"]).description
    assert not descriptor(specs["cache.static"]).read_only
    assert "applies live; from the next tick" in descriptor(specs["control_rate_hz"]).description
    assert descriptor(specs["model_path"]).read_only
