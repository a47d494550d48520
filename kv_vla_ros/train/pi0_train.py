"""Train π0 (transformers' ``PI0ForConditionalGeneration``) from recorded bags to use a streamed,
budgeted history (``kv-vla train --bags``).

Each training episode is the stream the session feeds (``pi0_stream``): one block per inference
(every ``actions_per_inference`` control steps, as the node infers), π0's flow-matching loss on
every block's action chunk given what the cache holds. For a share of episodes the held sets are a
budgeted chunked cache's (random fixed scores, ``evict_held_chunks`` old chunks beside the recent
window), so the policy learns to act from what a budget leaves. From scratch (a small π0 config
sized to the bags' frames) or ``init_from`` a π0 checkpoint directory. Normalization statistics
come from the bags. Auxiliary target (``aux_weight``, from the bags only, no labels): each block
predicts where the episode ends up, the mean commanded action over its last ``aux_tail`` share of
steps (``aux_target="tail_actions"``: a longer action horizon than the chunk; on a memory task it is
decided by what was seen early), or the pooled vision features of its first frame
(``"first_frame"``); on whole-history episodes only; the head is dropped at inference.

Randomness per sample: sample ``k`` of step ``s`` draws its episode, held sets and flow-matching
time and noise from its own generator ``(seed, s, k)`` (``kv_vla_ros.train.collective``), so the run
is the same alone or as one of N data-parallel workers (``kv-vla train --bags --workers N``,
``kv_vla_ros.train.pi0_parallel``: losses per step and final weights equal within float rounding).

Outputs beside the checkpoint: ``train_log.jsonl`` (one line per logged step), ``train_curves.png``,
``train_config.json``; ``checkpoint/`` (weights, optimizer as safetensors, progress) for ``resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from kv_vla_ros.progress import progress_bar as make_progress_bar

from kv_vla_ros.train.bag_episodes import RecordedEpisode
from kv_vla_ros.train.checkpoint import load_optimizer, load_progress, save_checkpoint
from kv_vla_ros.train.collective import Collective, sample_rng
from kv_vla_ros.train.curves import LOG_FILE, write_curves
from kv_vla_ros.train.pi0_stream import block_ids, flow_matching_loss, held_steps, prefix_states

CONFIG_FILE = "train_config.json"


@dataclass
class PI0TrainConfig:
    """Hyper-parameters of ``kv-vla train --bags`` (saved as train_config.json beside the model)."""

    model: dict = field(default_factory=lambda: {"text": {"hidden_size": 64, "num_hidden_layers": 3,
                                                          "intermediate_size": 128, "num_attention_heads": 4,
                                                          "num_key_value_heads": 1, "head_dim": 16},
                                                 "vision": {"hidden_size": 64, "intermediate_size": 128,
                                                            "num_hidden_layers": 2, "num_attention_heads": 4,
                                                            "patch_size": 16},
                                                 "dit": {"hidden_size": 64, "intermediate_size": 128,
                                                         "num_attention_heads": 4}})
    chunk_size: int = 10  # actions per inference the model predicts (π0's chunk)
    actions_per_inference: int = 5  # control steps between inferences: the stream's step
    num_inference_steps: int = 5
    init_from: str | None = None
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.01
    episodes_per_step: int = 4
    evict_prob: float = 0.5
    evict_from: float = 0.2
    evict_held_chunks: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 6])
    recent_chunks: int = 2
    aux_weight: float = 1.0
    aux_target: str = "tail_actions"  # or "first_frame"
    aux_tail: float = 0.25
    minutes: float = 55.0
    max_steps: int = 100000
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    # what the bags gave (recorded in the checkpoint): state joints, action dimensions, control rate
    state_names: list[str] | None = None
    action_names: list[str] | None = None
    control_rate_hz: float | None = None


def bag_statistics(episodes: list[RecordedEpisode]) -> dict[str, list[float]]:
    """Normalization statistics of the bags: ``actions_mean/std`` and ``state_mean/std`` per dimension."""
    actions = np.concatenate([e.actions for e in episodes])
    stats = {"actions_mean": actions.mean(0).tolist(), "actions_std": actions.std(0).tolist()}
    if episodes[0].states is not None:
        states = np.concatenate([e.states for e in episodes])
        stats.update(state_mean=states.mean(0).tolist(), state_std=states.std(0).tolist())
    return stats


def build_policy(cfg: PI0TrainConfig, episodes: list[RecordedEpisode], stats: dict | None = None):
    """A ``PI0Policy`` (float32) from scratch or ``init_from``, with the bags' statistics (``stats``, else
    those of ``episodes``; the shapes are ``episodes[0]``'s)."""
    from kv_vla_ros.vla.pi0 import PI0Policy, PI0PolicyConfig
    from kv_vla_ros.vla.pi0.tiny import make_processor, pi0_config

    ep = episodes[0]
    cams, side = ep.frames.shape[1], ep.frames.shape[2]
    state_dim = ep.states.shape[1] if ep.states is not None else 0
    action_dim = ep.actions.shape[1]
    stats = stats if stats is not None else bag_statistics(episodes)
    if cfg.init_from:
        from kv_vla_ros.vla import load_policy

        base = load_policy(cfg.init_from, dtype="float32")
        model, processor = base.model, base.processor
    else:
        from transformers import PI0ForConditionalGeneration

        config = pi0_config("tiny")
        text, vision, dit = config.vlm_config.text_config, config.vlm_config.vision_config, config.dit_config
        for section, obj in (("text", text), ("vision", vision), ("dit", dit)):
            for k, v in cfg.model.get(section, {}).items():
                setattr(obj, k, v)
        for k in ("num_hidden_layers", "num_key_value_heads", "head_dim"):
            setattr(dit, k, getattr(text, k))
        vision.image_size = side
        config.vlm_config.projection_dim = vision.projection_dim = text.hidden_size  # the projector maps into the LM
        config.chunk_size, config.num_inference_steps = cfg.chunk_size, cfg.num_inference_steps
        config.max_state_dim = config.max_action_dim = max(8, state_dim, action_dim)
        processor = make_processor(config, state_dim, action_dim)
        config.vlm_config.image_token_id = int(processor.image_token_id)
        torch.manual_seed(cfg.seed)
        model = PI0ForConditionalGeneration(config)
    for k, v in stats.items():
        setattr(processor, k, [max(x, 1e-3) for x in v] if k.endswith("std") else v)
    pcfg = PI0PolicyConfig(num_cameras=cams, max_cameras=max(3, cams), state_dim=state_dim, action_dim=action_dim,
                           actions_per_inference=cfg.actions_per_inference, num_inference_steps=cfg.num_inference_steps,
                           state_names=_names(cfg.state_names, state_dim),
                           action_names=_names(cfg.action_names, action_dim),
                           control_rate_hz=cfg.control_rate_hz)
    return PI0Policy(model.float(), processor, pcfg)


def _names(names: list[str] | None, dim: int) -> list[str] | None:
    """Names to record when they fit the dimension (and are distinct), else None."""
    names = list(names) if names else None
    return names if names and len(names) == dim and len(set(names)) == dim else None


@dataclass
class StreamEpisode:
    """One episode as tensors of the stream: ``pixels (1, n x cams, 3, S, S)``, ``states (n, max_state)``,
    ``actions (n, H, max_action)`` normalized, ``valid (n, H, max_action)``, prompt ids."""

    ids: torch.Tensor
    pixels: torch.Tensor
    states: torch.Tensor
    actions: torch.Tensor
    valid: torch.Tensor
    step_tokens: int
    tail: torch.Tensor  # (max_action_dim,) mean normalized action over the episode's last steps


def _tail_mean(norm: torch.Tensor, share: float, width: int) -> torch.Tensor:
    """(width,) the mean of the last ``share`` of the rows of ``norm (T, A)``, zero-padded."""
    k = max(1, round(norm.shape[0] * share))
    return torch.nn.functional.pad(norm[-k:].mean(0), (0, width - norm.shape[1]))


def stream_episode(policy, ep: RecordedEpisode, aux_tail: float = 0.25) -> StreamEpisode:
    from kv_vla_ros.vla.pi0 import processing

    mc, proc, every, h = policy.model.config, policy.processor, policy.default_actions_per_inference, \
        policy.model.config.chunk_size
    idx = np.arange(0, len(ep), every)
    frames = [f for t in idx for f in ep.frames[t]]
    pixels = proc.image_processor(frames, return_tensors="pt")["pixel_values"].unsqueeze(0)
    states = torch.zeros(len(idx), mc.max_state_dim)
    if ep.states is not None:
        states = torch.cat([processing.normalized_state(proc, ep.states[t], mc.max_state_dim, torch.float32, "cpu")
                            for t in idx])
    norm = (torch.as_tensor(ep.actions) - torch.tensor(proc.actions_mean)) / (torch.tensor(proc.actions_std) + 1e-8)
    actions = torch.zeros(len(idx), h, mc.max_action_dim)
    valid = torch.zeros(len(idx), h, mc.max_action_dim)
    for i, t in enumerate(idx):
        span = norm[t:t + h]
        actions[i, : len(span), : norm.shape[1]] = span
        valid[i, : len(span), : norm.shape[1]] = 1.0
    prompt = processing.prompt_ids(proc, ep.instruction)
    ids = block_ids(policy.image_token_id, policy.tokens_per_step, prompt, len(idx))
    return StreamEpisode(ids, pixels, states, actions, valid, policy.tokens_per_step + len(prompt),
                         _tail_mean(norm, aux_tail, mc.max_action_dim))


def episode_loss(policy, ep: StreamEpisode, before, after, aux_head=None, generator=None,
                 aux_target: str = "tail_actions", time: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """``(flow-matching loss, aux loss or None)`` of one streamed episode under held sets (``time``,
    ``noise``: the flow-matching draws, else π0's own sampling)."""
    model = policy.model
    cache, hidden = prefix_states(model, ep.ids, ep.pixels, before, return_hidden=True)
    fm = flow_matching_loss(model, cache, after, ep.step_tokens, ep.states, ep.actions, ep.valid, generator,
                            time=time, noise=noise)
    aux = None
    if aux_head is not None:
        n = ep.states.shape[0]
        if aux_target == "tail_actions":
            target, dims = ep.tail.view(1, -1), ep.valid[0, 0]
        else:
            with torch.no_grad():  # the pooled vision features of the episode's first frame
                target = model.model.vlm.get_image_features(ep.pixels[0, :1]).pooler_output.mean(1)
            dims = torch.ones(target.shape[-1])
        blocks = hidden.reshape(n, ep.step_tokens, -1).mean(1)
        aux = (((aux_head(blocks) - target) ** 2) * dims).sum(-1).mean() / dims.sum()
    return fm.mean(), aux


@torch.no_grad()
def probe_loss(policy, probe: list[StreamEpisode], recent: int) -> float:
    """Flow-matching loss on a fixed probe (the same noise and times at every call, full history):
    the loss curve without the sampling noise of a training step."""
    gen, total = torch.Generator().manual_seed(1234), 0.0
    model = policy.model
    for ep in probe:
        n = ep.states.shape[0]
        before, after = held_steps(n, None, None, recent)
        cache = prefix_states(model, ep.ids, ep.pixels, before)
        time = torch.rand(n, generator=gen) * 0.998 + 0.001
        noise = torch.randn(ep.actions.shape, generator=gen)
        total += flow_matching_loss(model, cache, after, ep.step_tokens, ep.states, ep.actions, ep.valid,
                                    time=time, noise=noise).mean().item()
    return total / max(1, len(probe))


def lr_at(cfg: PI0TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, min(cfg.warmup_steps, cfg.max_steps // 10)))
    cos = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * cos


def flow_draws(model_config, ep: StreamEpisode, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(time (steps,), noise (steps, H, A))`` of one sample, from its own generator: π0's Beta
    time sampling and Gaussian noise, the same whichever worker draws them."""
    n = ep.actions.shape[0]
    t = rng.beta(model_config.time_sampling_beta_alpha, model_config.time_sampling_beta_beta, n)
    time = torch.from_numpy(t * model_config.time_sampling_scale + model_config.time_sampling_offset).float()
    noise = torch.randn(ep.actions.shape, generator=torch.Generator().manual_seed(int(rng.integers(2 ** 62))))
    return time, noise


def _held(cfg: PI0TrainConfig, n: int, rng: np.random.Generator, progress: float):
    if progress >= cfg.evict_from and rng.random() < cfg.evict_prob:
        return (*held_steps(n, rng.random(n), int(rng.choice(cfg.evict_held_chunks)), cfg.recent_chunks), True)
    return (*held_steps(n, None, None, cfg.recent_chunks), False)


def _setup(cfg: PI0TrainConfig, episodes: list[RecordedEpisode], out: Path, resume: bool, comm: Collective,
           stats: dict | None = None):
    """``(policy, state, aux_head, optimizer, params)``, fresh or from ``out/checkpoint`` (every
    worker reads it; only rank 0 writes)."""
    ckpt = out / "checkpoint"
    policy = build_policy(cfg, episodes, stats)
    if resume:
        from transformers import PI0ForConditionalGeneration

        state = load_progress(ckpt)
        policy.model.load_state_dict(PI0ForConditionalGeneration.from_pretrained(str(ckpt)).state_dict())
    else:
        state = {"step": 0, "elapsed_s": 0.0, "episodes_seen": 0}
        if comm.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / LOG_FILE).write_text("")
    if comm.is_main:
        (out / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    model = policy.model.train()
    aux_head, same_head = None, True
    if cfg.aux_weight > 0:  # block hidden state -> the aux target
        if cfg.aux_target not in ("tail_actions", "first_frame"):
            raise ValueError(f"aux_target: expected tail_actions or first_frame, got {cfg.aux_target!r}")
        width = (model.config.max_action_dim if cfg.aux_target == "tail_actions"
                 else model.config.vlm_config.vision_config.hidden_size)
        aux_head = torch.nn.Linear(model.config.vlm_config.text_config.hidden_size, width)
        if resume and (ckpt / "aux_head.safetensors").is_file():
            from safetensors.torch import load_file

            saved = load_file(str(ckpt / "aux_head.safetensors"))
            same_head = saved["weight"].shape == aux_head.weight.shape  # else another target: a fresh head
            if same_head:
                aux_head.load_state_dict(saved)
    comm.broadcast_parameters(model)  # every worker starts from rank 0's weights
    if aux_head is not None:
        comm.broadcast_parameters(aux_head)
    params = list(model.parameters()) + (list(aux_head.parameters()) if aux_head is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume and same_head and len(state["param_groups"][0]["params"]) == len(params):
        load_optimizer(opt, ckpt / "optimizer.safetensors", state["param_groups"])
    return policy, state, aux_head, opt, params


def _step(cfg, policy, data, aux_head, opt, params, step: int, progress: float, comm: Collective) -> dict:
    """One optimizer step over the global batch of ``episodes_per_step`` samples (this worker computes
    its share, `Collective.mine`); each sample's episode, held sets and flow-matching draws come from
    its own generator (`sample_rng`): the same step whatever the worker count. Returns the logged figures."""
    n = cfg.episodes_per_step
    fm_sum, aux_sum, evicted = 0.0, 0.0, 0
    opt.zero_grad(set_to_none=True)
    for k in comm.mine(n):
        rng = sample_rng(cfg.seed, step, k)
        ep = data[int(rng.integers(len(data)))]
        before, after, ev = _held(cfg, ep.states.shape[0], rng, progress)
        time, noise = flow_draws(policy.model.config, ep, rng)
        # a target about the whole episode is unlearnable once its history may be gone: whole histories only
        fm, aux = episode_loss(policy, ep, before, after, None if ev else aux_head, None, cfg.aux_target,
                               time=time, noise=noise)
        loss = fm + (cfg.aux_weight * aux if aux is not None else 0.0)
        (loss / n).backward()
        fm_sum += fm.item()
        aux_sum += aux.item() if aux is not None else 0.0
        evicted += ev
    fm_sum, aux_sum, evicted = comm.reduce_gradients(params, [fm_sum, aux_sum, float(evicted)])
    evicted = round(evicted)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    aux_loss = aux_sum / (n - evicted) if aux_head is not None and n > evicted else None  # None: no whole history
    return {"loss": fm_sum / n, "aux_loss": aux_loss, "evicted_share": evicted / n}


def train_pi0(cfg: PI0TrainConfig, episodes: list[RecordedEpisode], out: str | Path, resume: bool = False,
              progress_bar: bool = True, log=print, stats: dict | None = None, stream_data=None):
    """Train; writes the π0 checkpoint directory ``out`` (loadable by ``load_policy``) and returns the policy.

    Alone, or as one of the workers of a process group (``torch.distributed`` initialised, see
    ``kv_vla_ros.train.collective``): then ``stats`` are the bags' statistics, ``episodes`` only
    need to give the shapes, ``stream_data(policy)`` the (lazy) sequence of every ``StreamEpisode``,
    and rank 0 writes the checkpoints, the log and the curves."""
    out = Path(out)
    ckpt = out / "checkpoint"
    comm = Collective()
    torch.set_num_threads(cfg.threads)
    policy, state, aux_head, opt, params = _setup(cfg, episodes, out, resume, comm, stats)
    model = policy.model
    if stream_data is not None:
        data = stream_data(policy)
    else:
        data = [stream_episode(policy, ep, cfg.aux_tail)
                for ep in make_progress_bar(episodes, desc="stream episodes", disable=not progress_bar)]
    start, last_ckpt = time.perf_counter() - state["elapsed_s"], time.perf_counter()
    bar = make_progress_bar(total=cfg.max_steps, initial=state["step"], desc="train π0",
                            disable=not progress_bar or not comm.is_main)
    logf = (out / LOG_FILE).open("a") if comm.is_main else None
    try:
        while True:
            # rank 0's clock decides for every worker: the same schedule and the same last step
            progress = comm.broadcast_float(max(state["step"] / cfg.max_steps,
                                                (time.perf_counter() - start) / (cfg.minutes * 60)))
            if progress >= 1.0:
                break
            lr = lr_at(cfg, state["step"], progress)
            for g in opt.param_groups:
                g["lr"] = lr
            row = _step(cfg, policy, data, aux_head, opt, params, state["step"], progress, comm)
            state["step"] += 1
            state["episodes_seen"] += cfg.episodes_per_step
            row = {"step": state["step"], **row, "lr": lr, "elapsed_s": round(time.perf_counter() - start, 1)}
            if comm.is_main and (state["step"] % cfg.log_every == 0 or state["step"] == 1):
                model.eval()
                row["probe_loss"] = probe_loss(policy, [data[i] for i in range(min(4, len(data)))],
                                               cfg.recent_chunks)
                model.train()
                logf.write(json.dumps(row) + "\n")
                logf.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", aux=f"{row['aux_loss'] or 0:.4f}", lr=f"{lr:.1e}",
                            refresh=False)
            if comm.is_main and time.perf_counter() - last_ckpt > cfg.checkpoint_minutes * 60:
                _save(ckpt, policy, opt, state, aux_head, start)
                last_ckpt = time.perf_counter()
    finally:
        if logf is not None:
            logf.close()
    bar.close()
    state["elapsed_s"] = time.perf_counter() - start
    model.eval()
    if comm.is_main:
        _save(ckpt, policy, opt, state, aux_head, start)
        policy.save_pretrained(out)
        write_curves(out)
        log(f"π0 trained: {state['step']} steps, {state['episodes_seen']} episodes, "
            f"{state['elapsed_s'] / 60:.1f} min; written to {out}")
    return policy


def _save(ckpt: Path, policy, opt, state: dict, aux_head, start: float) -> None:
    """The training checkpoint (whole or not at all), loadable as a policy too (evaluate mid-run)."""
    state["elapsed_s"] = time.perf_counter() - start

    def extra(path: Path) -> None:
        policy.processor.save_pretrained(str(path))
        policy.config.save(path)
        if aux_head is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in aux_head.state_dict().items()}, str(path / "aux_head.safetensors"))

    save_checkpoint(ckpt, policy.model, opt, state, extra)


__all__ = ["PI0TrainConfig", "bag_statistics", "build_policy", "flow_draws",
           "episode_loss", "lr_at", "stream_episode", "train_pi0", "write_curves"]
