"""What the policy node needs from the VLA tiers, without rclpy: loading the model and its session
(every failure one StartupError line), the device check, the unbounded-cache warning, and live
cache reconfiguration whose failures read like the ``cache.*`` parameters they come from."""

from __future__ import annotations

import warnings

import numpy as np


class StartupError(RuntimeError):
    """The node cannot start (model missing or broken, bad parameters): one line, exit 1."""


def check_device(device: str) -> None:
    """StartupError unless ``device`` names a torch device this machine has (checked before
    loading, so that a missing GPU is reported as such, not as a checkpoint error)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise StartupError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"device: {device!r} requested but no CUDA device is available on this machine "
                               f"(torch {torch.__version__}: torch.cuda.is_available() is False); use device:=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise StartupError(f"device: {device!r} requested but this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise StartupError(f"device: {device!r} requested but no MPS device is available; use device:=cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise StartupError(f"device: {device!r} is not supported (cpu, cuda, cuda:N, mps)")


def unbounded_cache_warning(cfg, policy) -> str | None:
    """The start-up warning of an unbounded cache, with its growth per control step; None when a
    budget bounds it. ``policy``: the session's ``StreamingPolicy``."""
    from kv_vla_ros.cache import kv_bytes_per_token

    if cfg.bounded:
        return None
    element = next(policy.model.parameters()).element_size()
    per_token = kv_bytes_per_token(policy.cache_model_config(), element)
    per_step = per_token * cfg.chunk_size
    why = "eviction full" if not cfg.evicts else f"eviction {cfg.eviction} with no budget_tokens"
    return (f"cache: UNBOUNDED ({why}): the KV cache grows by {per_step} bytes per control step "
            f"({cfg.chunk_size} tokens x {per_token} B) for as long as an episode lasts "
            f"({per_step * 20 * 3600 / 1e9:.2f} GB per hour at one step per 50 ms); set cache.eviction and "
            f"cache.budget_tokens to bound it (e.g. sink_window, {cfg.sink_tokens + 8 * cfg.chunk_size}: "
            f"the prefix and 8 control steps, or as config/kv_vla.yaml does)")


def load_session(model_path: str, device: str, dtype: str, num_threads: int, session_factory=None):
    """The checkpoint's policy (the package's own VLA or π0, by its config.json) and a
    ``VLASession`` on it; every failure becomes a one-line StartupError."""
    import torch

    from kv_vla_ros.vla import VLASession, load_policy, model_path_or_default
    from kv_vla_ros.vla.session import resolve_device_dtype

    from transformers.utils import logging as hf_logging

    # transformers' "Loading weights" progress bar would print into the node's log under launch
    hf_logging.disable_progress_bar()
    check_device(device)
    try:  # parameters that do not fit this machine end the node with one line, before any loading
        resolve_device_dtype(device, dtype)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    path = model_path_or_default(model_path)
    try:
        policy = load_policy(path, device=device, dtype=dtype)
        session = (session_factory or VLASession)(policy, policy.default_cache_config(), device, dtype=dtype)
    except Exception as exc:  # FileNotFoundError, ValueError, RuntimeError (bad device), ...
        raise StartupError(f"cannot load model from {path}: {exc}") from None
    return policy, session


STATE_TYPES = ("joint_state", "float32_multi_array")


def check_inputs(policy, image_topics: list[str], state_topic: str, state_type: str) -> str | None:
    """StartupError unless the topics give ``policy`` what it takes per step (one image topic per
    camera, a state topic when it takes a state); returns a warning for a state topic that a
    policy without state input will not subscribe (None otherwise)."""
    topics = [t for t in image_topics if t]
    if len(topics) != len(image_topics) or not topics:
        raise StartupError(f"image_topics: expected one non-empty topic name per camera, got {list(image_topics)}")
    if len(set(topics)) != len(topics):
        raise StartupError(f"image_topics: a topic is listed twice: {topics}")
    if len(topics) != policy.num_cameras:
        limit = getattr(getattr(policy, "config", None), "max_cameras", None)
        where = (f" (num_cameras in kv_vla_policy.json, at most max_cameras={limit})" if limit else "")
        above = f", more than the checkpoint allows ({limit})" if limit and len(topics) > limit else ""
        raise StartupError(f"image_topics: {len(topics)} topic(s) given{above}; the {policy.model_type} checkpoint "
                           f"takes {policy.num_cameras} camera frame(s) per step{where}")
    if state_type not in STATE_TYPES:
        raise StartupError(f"state_type: expected one of {', '.join(STATE_TYPES)}, got {state_type!r}")
    if policy.state_dim and not state_topic:
        raise StartupError(f"state_topic: the {policy.model_type} checkpoint takes a robot state of dimension "
                           f"{policy.state_dim}; set state_topic (sensor_msgs/JointState or std_msgs/Float32MultiArray "
                           "with state_type)")
    if state_topic and not policy.state_dim:
        return (f"state_topic: the {policy.model_type} checkpoint takes no robot state: {state_topic!r} is not "
                "subscribed")
    return None


def state_from_msg(msg, policy, joint_names: list[str] | None = None) -> np.ndarray:
    """A JointState (its positions; with ``joint_names``, those joints' positions in that order,
    picked by name) or Float32MultiArray (its data) message -> the checked (state_dim,) float32
    state; ValueError naming ``state`` or ``state_joint_names`` otherwise."""
    if hasattr(msg, "position") and joint_names:
        names = list(msg.name)
        missing = [n for n in joint_names if n not in names]
        if missing:
            raise ValueError(f"state_joint_names: {missing} not in the JointState's names {names}")
        if len(msg.position) != len(names):
            raise ValueError(f"state: JointState has {len(names)} names but {len(msg.position)} positions")
        data = [msg.position[names.index(n)] for n in joint_names]
    else:
        data = msg.position if hasattr(msg, "position") else msg.data
    return policy.check_state(np.asarray(data, dtype=np.float64).reshape(-1))


def pending_json(session) -> str:
    """The cache config waiting for the next episode as JSON ('' when none)."""
    import json

    pending = getattr(session, "pending_cache_config", None)
    return json.dumps(pending.to_dict(), sort_keys=True) if pending is not None else ""


def cache_error(exc: Exception) -> ValueError:
    """A cache failure as the parameter callback's reason, named like the parameter (``cache.``)."""
    text = str(exc) if isinstance(exc, ValueError) else f"live reconfiguration failed: {type(exc).__name__}: {exc}"
    return ValueError(text if text.startswith("cache") else f"cache.{text}")


def reconfigure(session, cfg) -> bool:
    """session.set_cache_config (which runs under inference mode, as the live cache's tensors
    need): True when applied live, False when it waits for the next episode; every failure
    becomes a ValueError whose message starts with ``cache.``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the node logs what it means
            return session.set_cache_config(cfg) is not False
    except Exception as exc:
        raise cache_error(exc) from None


__all__ = ["StartupError", "check_device", "load_session", "unbounded_cache_warning",
           "check_inputs", "state_from_msg", "STATE_TYPES",
           "pending_json", "cache_error", "reconfigure"]
