"""`CompiledDecode`: a decode step of a causal LM over the static chunked cache, captured once
per block length as a CUDA graph, so that after warm-up a control step launches one graph
instead of hundreds of kernels from Python.

Why explicit capture rather than ``torch.compile(mode="reduce-overhead")``: the step mixes a
pure-tensor forward with cache bookkeeping that is data dependent on purpose (which slots are
free, which chunks the gate keeps). Here that bookkeeping runs eagerly around the graph, on the
CPU (`ChunkedKVCache.begin_step` / `end_step`), and the captured forward reads only buffers
whose addresses never change: the input embeddings, the block's positions, each layer's slot
table and K/V slots. Nothing in it can trigger a recompile; the graph is captured again only
for a block length it has not seen (``captures`` counts them).

Modes: ``cuda_graph`` (CUDA only), ``eager`` (the very same prepared step, uncompiled: what
runs and is tested on a CPU), ``auto`` (``cuda_graph`` on a CUDA device, else ``eager``).
"""

from __future__ import annotations

import torch

from .static_layer import StaticChunkedLayer

MODES = ("auto", "cuda_graph", "eager")


class CompiledDecode:
    """``decode(inputs_embeds [1, q, hidden]) -> logits [1, vocab]`` of the block's last position.

    Args:
        model: a transformers causal LM (``inputs_embeds``, ``position_ids``, ``logits_to_keep``).
        cache: its `ChunkedKVCache` with ``static=True``, the prefix already fed.
        mode: see the module docstring.
    """

    def __init__(self, model, cache, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"compile mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if not getattr(cache, "config", None) or not cache.config.static:
            raise ValueError("compile: the compiled decode step needs the static-shape cache (cache.static: true)")
        if not all(isinstance(layer, StaticChunkedLayer) for layer in cache.layers):
            raise ValueError("compile: every attention layer must be a static chunked layer (no sliding-window layers)")
        device = next(model.parameters()).device
        if mode == "auto":
            mode = "cuda_graph" if device.type == "cuda" else "eager"
        if mode == "cuda_graph":
            if device.type != "cuda":
                raise ValueError(f"compile: CUDA graphs need a CUDA device, the model is on {device}")
            if cache.eviction.wants_attention:
                # a replayed graph runs no Python: the eviction would never see the step's attention
                raise ValueError(f"compile: eviction {cache.config.eviction!r} reads each step's attention from "
                                 "Python; it cannot run inside a CUDA graph (use another eviction or compile: false)")
        self.model, self.cache, self.mode = model, cache, mode
        self.captures = 0  # graphs captured so far (one per block length)
        self._graphs: dict[int, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def __call__(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        positions = self.cache.begin_step(inputs_embeds.shape[-2])
        try:
            if self.mode == "eager":
                logits = self._forward(inputs_embeds, positions)
            else:
                logits = self._replay(inputs_embeds, positions)
        except BaseException:
            self.cache.end_step(evict=False)
            raise
        self.cache.end_step()
        return logits

    def _forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # Explicit positions: the model must not derive them from the cache's (Python int) length,
        # which a captured graph would freeze.
        out = self.model(inputs_embeds=inputs_embeds, position_ids=positions.view(1, -1),
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _replay(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        entry = self._graphs.get(inputs_embeds.shape[-2])
        if entry is None:
            entry = self._capture(inputs_embeds, positions)
        static_in, graph, static_out = entry
        static_in.copy_(inputs_embeds)
        graph.replay()
        return static_out.clone()  # the graph's output buffer is overwritten by the next replay

    def _capture(self, inputs_embeds: torch.Tensor, positions: torch.Tensor):
        static_in = inputs_embeds.clone()
        # Warm-up on a side stream (lazy cuBLAS/allocator initialisation must not be captured).
        # Each run rewrites this step's prepared slots with the same values: no side effect.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(static_in, positions)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._forward(static_in, positions)
        self._pool = graph.pool()
        self.captures += 1
        entry = self._graphs[inputs_embeds.shape[-2]] = (static_in, graph, static_out)
        return entry


__all__ = ["CompiledDecode", "MODES"]
