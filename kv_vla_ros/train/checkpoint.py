"""Training checkpoints: the model (``save_pretrained``), the optimizer state as safetensors and a
small JSON of progress. No pickle: optimizer tensors are flattened to ``state.<param>.<key>``
and the param-group hyper-parameters go to the JSON."""

from __future__ import annotations

import json
import shutil
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


def save_checkpoint(directory: Path, model, optimizer, progress: dict, extra=None) -> Path:
    """Write the checkpoint whole or not at all: everything goes into ``<directory>.partial`` (the
    model, the optimizer, ``extra(path)``'s files, the JSON last), which then takes the place of
    ``directory`` by two renames; the previous checkpoint stays whole until then. A process killed
    while saving (a worker's death takes rank 0 down mid-save) leaves the last complete checkpoint."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    groups = save_optimizer(optimizer, partial / OPTIMIZER_FILE)
    if extra is not None:
        extra(partial)
    (partial / STATE_FILE).write_text(json.dumps({**progress, "param_groups": groups}, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    partial.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_progress(directory: Path) -> dict:
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not (directory / STATE_FILE).is_file() and (old / STATE_FILE).is_file():
        shutil.rmtree(directory, ignore_errors=True)  # killed between save_checkpoint's two renames
        old.rename(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{STATE_FILE}: no resumable checkpoint in {directory}")
    return json.loads(path.read_text())


__all__ = ["save_checkpoint", "load_progress", "load_optimizer", "save_optimizer", "OPTIMIZER_FILE", "STATE_FILE"]
