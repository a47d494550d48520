"""`PI0Policy`: transformers' ``PI0ForConditionalGeneration`` as a long-horizon streaming policy
(see ``streaming.py`` for the stream and its masks, ``config.py`` for the layout)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.vla.pi0 import processing
from kv_vla_ros.vla.pi0.config import POLICY_FILE, PI0PolicyConfig
from kv_vla_ros.vla.pi0.streaming import denoise, vlm_block
from kv_vla_ros.vla.policy import Episode, StreamingPolicy


def check_pi0_config(config) -> None:
    """The action expert writes into the VLM's cache layer by layer: the shapes must agree."""
    text, dit = config.vlm_config.text_config, config.dit_config
    for name in ("num_hidden_layers", "num_key_value_heads", "head_dim"):
        a, b = getattr(text, name, None), getattr(dit, name, None)
        if a != b:
            raise ValueError(f"config.json: dit_config.{name} ({b}) must equal vlm_config.text_config.{name} ({a}) "
                             "(the action expert reads the VLM's cache layer by layer)")


# What the streaming code reaches inside transformers' PI0ForConditionalGeneration beyond its public
# forward: checked once when a policy is built, so that a transformers version that moved them
# fails at load time, naming the version, instead of in the middle of an episode.
PI0_INTERNALS = ("model.embed_prefix", "model.vlm.language_model")
PI0_FORWARD_ARGS = ("state", "noise", "timestep", "past_key_values")


def check_pi0_internals(model) -> None:
    """ValueError naming the transformers version when π0's inner modules the stream uses are missing."""
    import inspect

    import transformers

    where = (f"transformers {transformers.__version__}'s {type(model).__name__}; the streaming code is tested with "
             "the range in requirements.txt")
    for path in PI0_INTERNALS:
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                raise ValueError(f"π0: {path} not found in {where}")
    accepted = inspect.signature(model.forward).parameters
    missing = [name for name in PI0_FORWARD_ARGS if name not in accepted]
    if missing:
        raise ValueError(f"π0: forward() takes no {', '.join(missing)} in {where}")


class PI0Policy(StreamingPolicy):
    """π0 over the session's chunked cache: one control step = the cameras' image tokens (one chunk);
    returns a chunk of ``config.chunk_size`` actions in robot units (un-normalized with the
    processor's statistics)."""

    model_type = "pi0"

    def __init__(self, model, processor, policy_config: PI0PolicyConfig | None = None,
                 device: str | torch.device = "cpu", gate=None):
        check_pi0_config(model.config)
        check_pi0_internals(model)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.processor = processor
        self.config = policy_config or PI0PolicyConfig()
        self.gate = gate
        mc = model.config
        self.image_seq_length = int(processor.image_seq_length)
        vision = mc.vlm_config.vision_config
        expected = (vision.image_size // vision.patch_size) ** 2
        if self.image_seq_length != expected:
            raise ValueError(f"processor_config.json: image_seq_length {self.image_seq_length} does not match the "
                             "vision "
                             f"tower ({vision.image_size}/{vision.patch_size})^2 = {expected}")
        self.image_size = vision.image_size
        self.num_cameras = self.config.num_cameras
        stats_dim = len(processor.state_mean) if processor.state_mean is not None else 0
        self.state_dim = self.config.state_dim or stats_dim
        if self.state_dim > mc.max_state_dim:
            raise ValueError(f"state_dim: {self.state_dim} is more than the model's max_state_dim {mc.max_state_dim}")
        if stats_dim and self.state_dim != stats_dim:
            raise ValueError(f"state_dim: {self.state_dim} does not match the processor's state statistics "
                             f"({stats_dim})")
        act_stats = len(processor.actions_mean) if processor.actions_mean is not None else 0
        self.action_dim = self.config.action_dim or act_stats or mc.max_action_dim
        if self.action_dim > mc.max_action_dim or (act_stats and self.action_dim != act_stats):
            raise ValueError(f"action_dim: {self.action_dim} does not fit max_action_dim {mc.max_action_dim} "
                             f"and the processor's action statistics ({act_stats or 'none'})")
        self.action_names = self.config.action_names
        self.state_names = self.config.state_names
        self.control_rate_hz = self.config.control_rate_hz
        self.action_chunk_length = mc.chunk_size  # transformers' PI0Config calls it chunk_size
        self.default_actions_per_inference = min(self.config.actions_per_inference or mc.chunk_size, mc.chunk_size)
        self.num_inference_steps = self.config.num_inference_steps or mc.num_inference_steps
        self.image_token_id = int(mc.vlm_config.image_token_id)
        if int(getattr(processor, "image_token_id", self.image_token_id)) != self.image_token_id:
            raise ValueError(f"config.json: vlm_config.image_token_id {self.image_token_id} is not the processor's "
                             f"image token id {processor.image_token_id} (the processor's tokenizer and the model "
                             "must agree where the image features go)")

    supports_guide = True  # a flow policy: real-time chunking can guide its sampling (`ChunkGuide`)

    def _guide_tensors(self, guide, chunk: int):
        """A `ChunkGuide` in robot units -> ``(target (1, m, action_dim), weights (m,), beta, hard)`` in
        the model's normalized units (the inverse of `processing.unnormalize_actions`); None stays None."""
        if guide is None:
            return None
        target = np.asarray(guide.target, dtype=np.float32)[:chunk]
        if target.shape[1] != self.action_dim:
            raise ValueError(f"guide: target has {target.shape[1]} action dimensions, the policy {self.action_dim}")
        y = torch.as_tensor(target)
        mean, std = self.processor.actions_mean, self.processor.actions_std
        if mean is not None and std is not None:
            y = (y - torch.tensor(mean, dtype=torch.float32)) / (torch.tensor(std, dtype=torch.float32) + 1e-8)
        weights = torch.as_tensor(np.asarray(guide.weights, dtype=np.float32)[:chunk], device=self.device)
        return y.unsqueeze(0).to(self.device), weights, float(guide.max_guidance), bool(guide.hard)

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory, device="cpu", dtype=None) -> "PI0Policy":
        """A π0 checkpoint directory: transformers' config.json + weights, its processor files
        (``PI0Processor.save_pretrained``), optionally ``kv_vla_policy.json`` and ``gate.safetensors``."""
        from transformers import PI0ForConditionalGeneration
        from transformers.utils import logging as hf_logging

        from kv_vla_ros.vla.kv_vla.model import load_gate

        directory = Path(directory)
        processor = processing.load_processor(directory)  # fails fast, before the weights load
        policy_config = PI0PolicyConfig.load(directory)
        # transformers' "Loading weights" bar is noise here (a local file; a node, a demo and an evaluation
        # each load the checkpoint, and `--no-progress` must mean no bar): off for this load only.
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = PI0ForConditionalGeneration.from_pretrained(str(directory), dtype=dtype or torch.float32,
                                                                use_safetensors=True,
                                                                local_files_only=True)
        except OSError as exc:
            raise FileNotFoundError(f"model.safetensors: π0 weights not loadable from {directory}: {exc}") from exc
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        gate = load_gate(directory, model.config.vlm_config.text_config)
        return cls(model, processor, policy_config, device, gate)

    def save_pretrained(self, directory) -> Path:
        directory = Path(directory)
        self.model.save_pretrained(str(directory))
        self.processor.save_pretrained(str(directory))
        self.config.save(directory)
        if self.gate is not None:
            self.gate.save(str(directory))
        return directory

    # ---- cache ------------------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.num_cameras * self.image_seq_length

    def default_cache_config(self) -> CacheConfig:
        return self.config.cache or CacheConfig(eviction="full", chunk_size=self.tokens_per_step, sink_tokens=0,
                                                budget_tokens=None)

    def check_cache_config(self, cfg: CacheConfig) -> CacheConfig:
        cfg = super().check_cache_config(cfg)
        if cfg.chunk_size != self.tokens_per_step:
            raise ValueError(f"cache.chunk_size: must equal the image tokens per step {self.tokens_per_step} "
                             f"({self.num_cameras} camera(s) x {self.image_seq_length}), got {cfg.chunk_size}")
        if cfg.sink_tokens != 0:
            raise ValueError(f"cache.sink_tokens: must be 0 for π0, got {cfg.sink_tokens} (every step's chunk carries "
                             "its own prompt after its images, as π0's processor orders them: there is no prefix)")
        if cfg.static:
            raise ValueError("cache.static: π0's bidirectional blocks need the dynamic cache (static=False)")
        return cfg

    def episode_cache_config(self, cfg: CacheConfig, episode: Episode) -> CacheConfig:
        """The cache of one episode: one chunk per step = its images + its prompt (see ``streaming.py``);
        the budget must hold the recent window of whole steps (the rule is in the error)."""
        step = episode.data["step_tokens"]
        need = cfg.recent_chunks * step
        budgets = ([("budget_tokens", cfg.budget_tokens)] if cfg.budget_tokens is not None else [])
        budgets += [(f"layer_budgets[{i}]", b) for i, b in enumerate(cfg.layer_budgets or [])]
        for name, budget in budgets:
            if cfg.evicts and budget < need:
                raise ValueError(
                    f"{name}: {budget} cannot hold this episode's recent window: a π0 budget must hold recent_chunks "
                    f"whole steps, {cfg.recent_chunks} x ({self.num_cameras} camera(s) x {self.image_seq_length} "
                    f"image tokens + {step - self.tokens_per_step} prompt tokens of {episode.instruction!r}) = {need}")
        return cfg.replace(sink_tokens=0, chunk_size=step)

    def cache_model_config(self):
        return self.model.config.vlm_config.text_config

    def attention_model(self):
        return self.model  # the VLM and the action expert share the cache: both switch

    # ---- episode ----------------------------------------------------------------------------
    def new_episode(self, instruction: str) -> Episode:
        ids = processing.prompt_ids(self.processor, instruction)
        if len(ids) > self.config.max_prompt_tokens:
            raise ValueError(f"instruction: {len(ids)} prompt tokens, more than max_prompt_tokens="
                             f"{self.config.max_prompt_tokens} ({POLICY_FILE})")
        gen = torch.Generator(device=self.device).manual_seed(self.config.noise_seed)
        return Episode(instruction, 0, data={"prompt": ids, "generator": gen,
                                             "step_tokens": self.tokens_per_step + len(ids)})

    def block_ids(self, episode: Episode) -> torch.Tensor:
        """(1, q) ids of every step's block, in π0's order: the cameras' image tokens, then the prompt."""
        ids = [self.image_token_id] * self.tokens_per_step + list(episode.data["prompt"])
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def step(self, cache, episode, images, state=None, noise: torch.Tensor | None = None,
             num_steps: int | None = None, guide=None, **kwargs):
        """Camera frame(s) (+ state) -> actions ``(chunk_size, action_dim)`` float32, robot units.

        Args:
            noise: optional (1, chunk_size, max_action_dim) starting noise (default: the episode's
                generator, seeded by ``noise_seed``).
            guide: optional `ChunkGuide` (real-time chunking: the first rows sampled toward the
                actions still queued, robot units); None: plain sampling.
        """
        t0 = time.perf_counter()
        frames = self.check_images(images)
        state = self.check_state(state)
        mc, dtype = self.model.config, self.model.dtype
        pix = processing.pixel_values(self.processor, frames, dtype, self.device)
        cams = torch.ones(1, self.num_cameras, dtype=torch.bool, device=self.device)
        embeds = self.model.model.embed_prefix(self.block_ids(episode), pix, cams)
        t1 = time.perf_counter()
        vlm_block(self.model, cache, embeds)
        t2 = time.perf_counter()
        st = processing.normalized_state(self.processor, state, mc.max_state_dim, dtype, self.device)
        if noise is None:
            noise = torch.randn(1, mc.chunk_size, mc.max_action_dim, generator=episode.data["generator"],
                                device=self.device)
        elif tuple(noise.shape) != (1, mc.chunk_size, mc.max_action_dim):
            raise ValueError(f"noise: expected shape (1, {mc.chunk_size}, {mc.max_action_dim}), "
                             f"got {tuple(noise.shape)}")
        x = denoise(self.model, cache, st, noise.to(self.device), num_steps or self.num_inference_steps,
                    self._guide_tensors(guide, mc.chunk_size))
        t3 = time.perf_counter()
        actions = processing.unnormalize_actions(self.processor, x[0, :, : self.action_dim])
        t4 = time.perf_counter()
        return actions, {"encode": (t1 - t0) * 1e3, "forward": (t2 - t1) * 1e3, "decode": (t4 - t2) * 1e3,
                         "denoise": (t3 - t2) * 1e3, "total": (t4 - t0) * 1e3}


__all__ = ["PI0Policy", "check_pi0_config", "check_pi0_internals", "PI0_INTERNALS"]
