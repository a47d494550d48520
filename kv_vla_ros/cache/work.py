"""`StepWork`: what one step costs, counted rather than timed, so the figure does not depend on
the load of the machine it runs on.

It counts the aten operations a block of code dispatches, the tensor elements they read and
write (inputs plus outputs: a proxy for memory traffic), and the Python function calls it makes
(``sys.setprofile``). A per-step cost that grows with the episode (bookkeeping over every chunk
ever seen, rankings over the whole history) shows up as a count that grows with the history,
even on a busy 2-core CI machine where latency figures are noise.

    with StepWork() as work:  # after one warm-up step: first calls initialise lazily
        model(inputs_embeds=x, past_key_values=cache)
    work.ops, work.elements, work.python_calls
"""

from __future__ import annotations

import gc
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class StepWork(TorchDispatchMode):
    """Counts aten ops, elements touched (per op name in ``by_op``) and Python calls."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.elements = 0
        self.python_calls = 0
        self.by_op: Counter[str] = Counter()
        self._previous_profiler = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        n = sum(t.numel() for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor))
        self.ops += 1
        self.elements += n
        self.by_op[str(func)] += n
        return out

    def _profile(self, frame, event, arg) -> None:
        if event in ("call", "c_call"):
            self.python_calls += 1

    def __enter__(self):
        # A garbage collection in the middle would run finalizers and count their calls.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._previous_profiler = sys.getprofile()
        sys.setprofile(self._profile)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.setprofile(self._previous_profiler)
        if self._gc_was_enabled:
            gc.enable()
        return super().__exit__(*exc)

    def as_dict(self) -> dict:
        return {"aten_ops": self.ops, "elements": self.elements, "python_calls": self.python_calls}


__all__ = ["StepWork"]
