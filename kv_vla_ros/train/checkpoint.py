"""Training checkpoints: the model (``save_pretrained``), the optimizer state as safetensors and a
small JSON of progress. No pickle: optimizer tensors are flattened to ``state.<param>.<key>``
and the param-group hyper-parameters go to the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "train_state.json"


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> list[dict]:
    """Write tensors to ``path``; return the param groups (JSON-able, without params)."""
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{key}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(path))
    return [{k: v for k, v in g.items()} for g in sd["param_groups"]]


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, groups: list[dict]) -> None:
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(directory: Path, model, optimizer, progress: dict) -> Path:
    """Atomic-enough: write into ``directory`` then the JSON last (its presence marks completeness)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    groups = save_optimizer(optimizer, directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps({**progress, "param_groups": groups}, indent=2) + "\n")
    return directory


def load_progress(directory: Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{STATE_FILE}: no resumable checkpoint in {directory}")
    return json.loads(path.read_text())


__all__ = ["save_checkpoint", "load_progress", "load_optimizer", "save_optimizer", "OPTIMIZER_FILE", "STATE_FILE"]
