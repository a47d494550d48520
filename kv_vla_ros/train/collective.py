"""What a training loop needs to run as one of N data-parallel workers (torch.distributed, any backend),
and nothing when it runs alone (one process: every call is the identity, no process group needed).

The rule that makes a run the same model whatever the worker count:

- **One global batch, split by sample**: global step ``s`` has ``B`` samples ``k = 0..B-1``; worker
  ``r`` of ``N`` computes samples ``k`` with ``k % N == r``. Each sample's randomness (which
  episode, its eviction mask, its noise and flow-matching time) comes from a generator seeded by
  ``(seed, s, k)`` (`sample_rng`), never from a worker's or a process's stream, so sample ``k`` of
  step ``s`` is the same whichever worker computes it.
- **Gradients summed, not averaged per worker**: each worker backpropagates ``loss_k / B`` of its
  own samples; `Collective.reduce_gradients` sums the gradients over the workers (one all-reduce
  of a flat buffer), so every worker holds the gradient of the global batch's mean loss, and
  steps its own copy of the optimizer to the same weights. A parameter no worker touched this step
  keeps ``grad None`` (AdamW then leaves it alone, as in one process).
- **One schedule**: progress (steps and wall time) is rank 0's, broadcast every step, so the
  learning rate, eviction start and the stop are the same on every worker.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_rng(seed: int, step: int, sample: int, stream: int = 0) -> np.random.Generator:
    """The generator of sample ``sample`` of global step ``step`` (``stream`` tells apart two uses)."""
    return np.random.default_rng([int(seed), int(stream), int(step), int(sample)])


class Collective:
    """This process's place among the workers (``rank``, ``world``) and the collectives a step needs."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self._dist.get_rank() if self._dist else 0
        self.world = self._dist.get_world_size() if self._dist else 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that writes checkpoints, logs and curves."""
        return self.rank == 0

    def mine(self, samples: int) -> range:
        """The sample indices of a global batch of ``samples`` that this worker computes."""
        return range(self.rank, samples, self.world)

    def reduce_gradients(self, params: list[torch.Tensor], figures: list[float]) -> list[float]:
        """Sum every parameter's gradient and the ``figures`` (loss sums, counts) over the workers.

        One all-reduce of ``[grads..., touched flags..., figures...]`` (float32); a parameter whose
        gradient is None on every worker stays None. Returns the summed figures.
        """
        if self._dist is None:
            return list(figures)
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in params]
        touched = torch.tensor([float(p.grad is not None) for p in params])
        flat = torch.cat([*parts, touched, torch.tensor(figures, dtype=torch.float32)])
        self._dist.all_reduce(flat)
        total = sum(p.numel() for p in params)
        at = 0
        for i, p in enumerate(params):
            p.grad = flat[at:at + p.numel()].view_as(p).clone() if flat[total + i] > 0 else None
            at += p.numel()
        return flat[total + len(params):].tolist()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every worker (float64)."""
        if self._dist is None:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        self._dist.broadcast(t, 0)
        return float(t.item())

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights into every worker's copy (the start of a run, as DDP does)."""
        if self._dist is None:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            self._dist.broadcast(t.data, 0)

    def gather(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every worker (small Python objects)."""
        if self._dist is None:
            return [obj]
        out = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()


__all__ = ["Collective", "sample_rng"]
