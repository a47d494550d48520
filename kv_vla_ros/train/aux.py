"""Auxiliary heads: privileged per-step targets that give a memory decision a dense signal.

Behaviour cloning gives the Memory decision one token of signal per episode; a linear head on the
backbone's last hidden state at every action-predicting position, trained to name the cue on each
step after it was seen, makes "retrieve the cue" a target at every step (see docs/method.md, "A
policy that uses its memory"). The heads
live beside the policy during training (and in training checkpoints, to resume) and are never
part of the saved policy: inference does not need them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

AUX_HEADS_FILE = "aux_heads.safetensors"


class AuxHeads(nn.Module):
    """One linear classifier per target: hidden states (B, T, D) -> logits (B, T, classes)."""

    def __init__(self, targets: dict[str, int], hidden_size: int):
        super().__init__()
        for name, classes in targets.items():
            if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
                raise ValueError(f"aux[{name!r}]: number of classes must be an int >= 2, got {classes!r}")
        self.targets = dict(targets)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_size, n) for name, n in targets.items()})

    def loss(self, hidden: torch.Tensor,
             labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """Mean CE over labelled steps, averaged over targets; labels name -> (B, T) int64 (-1: none).

        Returns ``(loss, {name: (correct, labelled)})``; a target with no labelled step in the
        batch adds nothing.
        """
        total, used, stats = hidden.new_zeros(()), 0, {}
        for name, head in self.heads.items():
            y = labels[name].to(hidden.device)
            mask = y >= 0
            count = int(mask.sum())
            if count == 0:
                stats[name] = (0, 0)
                continue
            logits = head(hidden[mask])
            total = total + F.cross_entropy(logits, y[mask])
            used += 1
            stats[name] = (int((logits.argmax(-1) == y[mask]).sum()), count)
        return total / max(used, 1), stats

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_model

        save_model(self, str(Path(directory) / AUX_HEADS_FILE),
                   metadata={"targets": repr(sorted(self.targets.items()))})

    def load(self, directory: str | Path) -> bool:
        """Load heads saved by ``save`` if present (a resumed run); False when there are none."""
        from safetensors.torch import load_model

        path = Path(directory) / AUX_HEADS_FILE
        if not path.is_file():
            return False
        load_model(self, str(path))
        return True


__all__ = ["AuxHeads", "AUX_HEADS_FILE"]
