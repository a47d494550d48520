"""`load_policy`: the policy of a checkpoint directory, chosen by its config.json ``model_type``
from a registry of loaders (the package's own VLA, π0). Apart from the policies so that
`kv_vla_ros.vla.policy` (the contract every policy implements) imports no policy of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from kv_vla_ros.vla.policy import KVVLAPolicy, StreamingPolicy, checkpoint_model_type, resolve_device_dtype


def _load_pi0(directory, device, dtype):
    from kv_vla_ros.vla.pi0 import PI0Policy

    return PI0Policy.from_pretrained(directory, device=device, dtype=dtype)


POLICY_LOADERS: dict[str, Callable] = {"kv_vla": KVVLAPolicy.from_pretrained, "pi0": _load_pi0}


def load_policy(directory: str | Path, device: str | torch.device = "cpu", dtype=None) -> StreamingPolicy:
    """Load the policy of a checkpoint directory, chosen by its config.json ``model_type``
    (``dtype``: a name or torch dtype, default the checkpoint's)."""
    if dtype is not None:  # a bad name, or float16 on a CPU, fails before any weights load
        device, dtype = resolve_device_dtype(device, dtype)
    kind = checkpoint_model_type(directory)
    if kind not in POLICY_LOADERS:
        raise ValueError(f"config.json: model_type {kind!r} is not a supported policy "
                         f"(supported: {', '.join(sorted(POLICY_LOADERS))})")
    return POLICY_LOADERS[kind](directory, device, dtype)


__all__ = ["POLICY_LOADERS", "load_policy"]
