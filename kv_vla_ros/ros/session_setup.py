"""What the policy node needs from the VLA tiers, without rclpy: loading the model and its session
(every failure one StartupError line), the device check, the unbounded-cache warning, and live
cache reconfiguration whose failures read like the ``cache.*`` parameters they come from."""

from __future__ import annotations

import warnings



class StartupError(RuntimeError):
    """The node cannot start (model missing or broken, bad parameters): one line, exit 1."""


def attach_trained_gate(model, directory):
    """Give ``model`` the gate `kv-vla train-gate` saved beside its checkpoint, unless it has one.

    VLAModel.from_pretrained does not load gate.safetensors (yet); without this the ``gated``
    policy would run an untrained gate. The demo's offline check does the same, so online and
    offline runs keep the same gate.
    """
    from pathlib import Path

    from kv_vla_ros.cache import GATE_FILE, ChunkGate

    if getattr(model, "gate", None) is None and (Path(directory) / GATE_FILE).is_file():
        model.gate = ChunkGate.load(str(directory)).to(model.device).eval()
    return model


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


def unbounded_cache_warning(cfg, model) -> str | None:
    """The start-up warning of an unbounded cache, with its growth per control step; None when a
    budget bounds it."""
    from kv_vla_ros.cache import kv_bytes_per_token

    if cfg.bounded:
        return None
    element = next(model.parameters()).element_size()
    per_token = kv_bytes_per_token(model.backbone.config, element)
    per_step = per_token * cfg.chunk_size
    why = "policy full" if not cfg.evicts else f"policy {cfg.policy} with no budget_tokens"
    return (f"cache: UNBOUNDED ({why}): the KV cache grows by {per_step} bytes per control step "
            f"({cfg.chunk_size} tokens x {per_token} B) for as long as an episode lasts "
            f"({per_step * 20 * 3600 / 1e9:.2f} GB per hour at one step per 50 ms); set cache.policy and "
            f"cache.budget_tokens to bound it (as config/kv_vla.yaml does)")


def load_session(model_path: str, device: str, dtype: str, num_threads: int, session_factory=None):
    """Model + VLASession; every failure becomes a one-line StartupError."""
    import torch

    from kv_vla_ros.vla import DEFAULT_MODEL_PATH, VLAModel, VLASession

    from kv_vla_ros.vla.session import resolve_device_dtype

    check_device(device)
    try:  # parameters that do not fit this machine end the node with one line, before any loading
        resolve_device_dtype(device, dtype)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    path = model_path or str(DEFAULT_MODEL_PATH)
    try:
        model = attach_trained_gate(VLAModel.from_pretrained(path, device=device), path)
        session = (session_factory or VLASession)(model, model.config.cache, device, dtype=dtype)
    except Exception as exc:  # FileNotFoundError, ValueError, RuntimeError (bad device), ...
        raise StartupError(f"cannot load model from {path}: {exc}") from None
    return model, session


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


__all__ = ["StartupError", "attach_trained_gate", "check_device", "load_session", "unbounded_cache_warning",
           "pending_json", "cache_error", "reconfigure"]
