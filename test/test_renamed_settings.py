"""Old names keep working for one release, each with a deprecation warning: ``CacheConfig(policy=)``
and a checkpoint whose cache says ``"policy"``, the ``--policy`` / ``--policies`` flags, and the
registry's old Python names. (The ROS parameter ``cache.policy``: test_ros_user.py.)"""

import argparse
import json
import shutil

import pytest

import kv_vla_ros.cache as cache_tier
from kv_vla_ros.cache import CacheConfig
from kv_vla_ros.cache.spec import add_cache_argument, add_renamed_flag


def test_cache_config_takes_policy_as_the_old_name_of_eviction():
    new = CacheConfig(eviction="window", budget_tokens=200)
    with pytest.warns(DeprecationWarning, match="policy is deprecated: it is called eviction"):
        assert CacheConfig(policy="window", budget_tokens=200) == new
    with pytest.warns(DeprecationWarning):
        assert CacheConfig.from_dict({"policy": "window", "budget_tokens": 200}) == new
    with pytest.warns(DeprecationWarning):
        assert new.replace(policy="full").eviction == "full"
    with pytest.warns(DeprecationWarning):
        assert new.policy == "window"
    with pytest.raises(ValueError, match="policy: the old name of eviction"):
        CacheConfig(policy="window", eviction="full")
    assert "policy" not in new.to_dict() and new.to_dict()["eviction"] == "window"


def test_a_checkpoint_written_with_the_old_cache_key_loads_the_same(tmp_path):
    from kv_vla_ros.vla import DEFAULT_MODEL_PATH, VLAModel

    old = tmp_path / "old"
    shutil.copytree(DEFAULT_MODEL_PATH, old)
    meta = json.loads((old / "config.json").read_text())
    meta["cache"] = {("policy" if k == "eviction" else k): v for k, v in meta["cache"].items()}
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.warns(DeprecationWarning, match="policy"):
        loaded = VLAModel.from_pretrained(old)
    assert loaded.config.cache == VLAModel.from_pretrained(DEFAULT_MODEL_PATH).config.cache


def test_old_flags_warn_and_fill_the_new_ones(capsys):
    parser = argparse.ArgumentParser(prog="kv-vla eval")
    add_cache_argument(parser)
    parser.add_argument("--evictions")
    add_renamed_flag(parser, "--policies", "--evictions", "evictions")
    args = parser.parse_args(["--cache", "full", "--policy", "window:budget_frac=0.25", "--policies", "full,h2o"])
    assert args.cache == ["full", "window:budget_frac=0.25"] and args.evictions == "full,h2o"
    err = capsys.readouterr().err
    assert "kv-vla eval: warning: --policy is deprecated: use --cache" in err
    assert "--policies is deprecated: use --evictions" in err
    assert "--policy" not in parser.format_help()  # hidden: the help shows the new name only


def test_the_registrys_old_python_names_still_resolve():
    with pytest.warns(DeprecationWarning, match="POLICIES"):
        assert cache_tier.POLICIES is cache_tier.EVICTIONS
    with pytest.warns(DeprecationWarning):
        assert cache_tier.make_policy is cache_tier.make_eviction
