"""Paper-scale benchmark: per-step latency, KV bytes and FLOPs against history length for full,
window and gated caches (dynamic and static), as ratios against full measured in the same run,
side by side with the figures KV-Efficient VLA reports.

Backbones: ``default`` (the shipped model's backbone), ``openvla`` (Llama-2-7B dimensions, 256
visual + 7 action tokens per step, random weights, bf16; for a GPU), ``openvla-small`` (the same
shape scaled down so that it runs on a CPU in a few minutes), ``pi0`` (transformers' π0 streamed as
``PI0Policy`` streams it, the denoising steps included in every step's figures; π0's real size in
bfloat16 on a GPU, a scaled-down config on a CPU: see ``bench_pi0``).

Policies: ``full``, ``window``, ``gated`` (dynamic cache), ``gated-static`` (static-shape cache),
``gated-static-compiled`` (the static cache's decode step as a CUDA graph; uncompiled on a CPU).
Each row also gives the step's load-independent work (aten ops, elements touched, Python calls:
flat in the history when the per-step cost is O(held)) and its floors on this device: bytes read
(weights + K/V) over the measured memory bandwidth, and FLOPs over the measured matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from kv_vla_ros.machine_load import OtherLoad
from kv_vla_ros.progress import progress_bar

from kv_vla_ros.cache import CacheConfig, attention_implementation, make_cache, use_kv_vla_attention
from kv_vla_ros.cache.compiled import CompiledDecode
from kv_vla_ros.cache.work import StepWork
from kv_vla_ros.bench import floors

PAPER = {  # KV-Efficient VLA (arXiv 2509.21354): v2 measured, v1 theoretical, the paper's cost model
    "speedup": {"v2": 1.34, "v1": 1.21, "cost model": 1.61},
    "kv_memory_reduction": {"v2": 1.87, "v1": 1 / 0.36, "cost model": 2.44},
    "flops_reduction_pct": {"v2": 24.6},
}

BACKBONES = {
    "openvla": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, frame_tokens=256, action_tokens=7, dtype="bfloat16"),
    # OpenVLA's token layout with 1/16 of the width and 1/8 of the depth: minutes on 2 CPU cores
    "openvla-small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                          num_key_value_heads=8, frame_tokens=256, action_tokens=7, dtype="float32"),
}
PREFIX = 32


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", choices=["default", *BACKBONES, "pi0"], default="openvla-small")
    parser.add_argument("--model", default=None, help="checkpoint for --backbone default (default: the shipped one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--history", default="16,64,256,1024", help="history lengths in frames to measure at")
    parser.add_argument("--max-full-frames", type=int, default=None,
                        help="stop the full cache here (its cost grows without bound; default: CPU 256, GPU all)")
    parser.add_argument("--budget-frames", type=int, default=8, help="budget: this many steps' tokens (default 8)")
    parser.add_argument("--evictions", default=None,
                        help="default: CPU full,window,gated,gated-static; GPU "
                        "full,gated,gated-static,gated-static-compiled "
                        "(static variants are skipped for pi0: its bidirectional blocks need the dynamic cache)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="weights and K/V dtype (default: the backbone's: openvla and pi0 on a GPU bfloat16, "
                        "others float32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per history length (median)")
    parser.add_argument("--out", default="runs/bench_paper")
    parser.add_argument("--threads", type=int, default=2)


def build_backbone(name: str, model_path: str | None, device: str, dtype: str | None = None):
    """(transformers causal LM, tokens per step, dtype) with random weights (or the shipped ones)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "default":
        from kv_vla_ros.vla import VLAModel, model_path_or_default

        dtype = getattr(torch, dtype or "float32")
        vla = VLAModel.from_pretrained(model_path_or_default(model_path), device=device, dtype=dtype)
        return vla.backbone, vla.config.tokens_per_step, dtype
    spec = dict(BACKBONES[name])
    frame, action = spec.pop("frame_tokens"), spec.pop("action_tokens")
    dtype = getattr(torch, dtype or spec.pop("dtype"))
    spec.pop("dtype", None)
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=1 << 20, **spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return model, frame + action, dtype


def cache_configs(policies: list[str], step: int, budget_frames: int, prefix: int = PREFIX) -> dict[str, CacheConfig]:
    budget = budget_frames * step  # "a budget of N frames' tokens", prefix included
    out = {}
    for name in policies:
        base = name.removesuffix("-compiled")
        policy, static = base.removesuffix("-static"), base.endswith("-static")
        if name.endswith("-compiled") and not static:
            raise ValueError(f"policies: {name!r}: only a static cache compiles (e.g. gated-static-compiled)")
        if policy == "full":
            out[name] = CacheConfig(eviction="full", chunk_size=step, recent_chunks=2, sink_tokens=prefix,
                                    budget_tokens=None)
        else:
            out[name] = CacheConfig(eviction=policy, chunk_size=step, recent_chunks=2, sink_tokens=prefix,
                                    budget_tokens=budget, gate_threshold=0.0, static=static)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def measure(model, configs, step: int, checkpoints: list[int], repeats: int, max_full: int, device: str, dtype,
            forward=None, prefix: int = PREFIX, cache_model_config=None, hidden: int | None = None):
    """Stream steps of ``step`` random embeddings through one cache per policy, in lockstep (the
    policies take turns step by step, so background load hits them alike); at each checkpoint
    time ``repeats`` steps per policy (median) and count one step's FLOPs. Only the last
    position's logits are computed, as a VLA decoding its action does.
    ``forward(x, cache)`` runs one step (default: the causal LM, last position's logits only).
    Returns ``{policy: {frames: row}}``."""
    hidden = hidden or model.config.hidden_size
    forward = forward or (lambda x, cache: model(inputs_embeds=x, past_key_values=cache, logits_to_keep=1))
    gen = torch.Generator(device="cpu").manual_seed(0)

    def embeds(n):
        return torch.randn(1, n, hidden, generator=gen).to(device, dtype)

    caches = {name: make_cache(cfg, cache_model_config or model.config) for name, cfg in configs.items()}
    limits = {name: max_full if cfg.eviction == "full" else max(checkpoints) for name, cfg in configs.items()}
    for cache in caches.values():
        forward(embeds(prefix), cache)
    decoders = {name: CompiledDecode(model, caches[name]) for name in configs if name.endswith("-compiled")}

    def step_of(name, x):
        if name in decoders:
            decoders[name](x)
        else:
            forward(x, caches[name])
    results = {name: {} for name in configs}
    done = 0
    bar = progress_bar(total=max(checkpoints), desc="history", unit="frame")
    for target in checkpoints:
        active = {n: c for n, c in caches.items() if target <= limits[n]}
        while done < target - repeats - 2:
            x = embeds(step)
            for n in active:
                step_of(n, x)
            done += 1
            bar.update()
        times = {n: [] for n in active}
        for _ in range(repeats):
            x = embeds(step)
            for n in active:
                sync(device)
                t0 = time.perf_counter()
                step_of(n, x)
                sync(device)
                times[n].append(time.perf_counter() - t0)
            done += 1
            bar.update()
        # The work of one more step, counted (not timed: independent of the machine's load).
        x = embeds(step)
        work = {}
        for n in active:
            with StepWork() as counted:
                step_of(n, x)
            work[n] = counted.as_dict()
        # FLOPs of one more step, counted with the matmul-based eager attention (FlopCounterMode
        # does not see every fused sdpa kernel); the cache state carries on unchanged.
        x = embeds(step)
        with attention_implementation(model, "kv_vla_eager"):
            for n, cache in active.items():
                with FlopCounterMode(display=False) as counter:
                    forward(x, cache)
                s = cache.stats()
                results[n][target] = {"ms": statistics.median(times[n]) * 1e3, "flops": counter.get_total_flops(),
                                      "tokens_seen": s["tokens_seen"], "tokens_held": s["tokens_held"],
                                      "kv_bytes": s["bytes_held"], "kv_bytes_read": floors.kv_bytes_read(cache),
                                      **work[n]}
        done += 2
        bar.update(2)
        for n in [n for n in caches if limits[n] <= target]:
            del caches[n]  # free the full cache's memory once it has reached its last checkpoint
    bar.close()
    return results


def ratios(results: dict) -> list[dict]:
    table = []
    full = results.get("full", {})
    for name, rows in results.items():
        for frames, r in rows.items():
            row = {"policy": name, "frames": frames, **r}
            if name != "full" and frames in full:
                f = full[frames]
                row.update(speedup=f["ms"] / r["ms"], kv_reduction=f["kv_bytes"] / max(1, r["kv_bytes"]),
                           flops_saved_pct=100 * (1 - r["flops"] / f["flops"]))
            table.append(row)
    return table


def markdown(table: list[dict], title: str) -> str:
    lines = [f"**{title}**", "",
             "| policy | history (frames) | tokens seen | tokens held | ms/step | KV MiB | GFLOP/step "
             "| speedup vs full | KV bytes vs full | FLOPs saved |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        extra = (f"{r['speedup']:.2f}x | {r['kv_reduction']:.2f}x | {r['flops_saved_pct']:.1f}%" if "speedup" in r
                 else "— | — | —")
        lines.append(f"| {r['policy']} | {r['frames']} | {r['tokens_seen']} | {r['tokens_held']} | {r['ms']:.2f} | "
                     f"{r['kv_bytes'] / 2**20:.1f} | {r['flops'] / 1e9:.2f} | {extra} |")
    lines += ["", "| figure | KV-Efficient VLA paper | this run (gated, best history measured against full) |",
              "|---|---|---|"]
    gated = [r for r in table if r["policy"].startswith("gated") and "speedup" in r]
    best = max(gated, key=lambda r: r["frames"]) if gated else None
    ours = ({k: "—" for k in ("speedup", "kv", "flops")} if best is None else {
        "speedup": "%.2fx at %d frames" % (best["speedup"], best["frames"]),
        "kv": "%.2fx less" % best["kv_reduction"],
        "flops": "%.1f%% fewer" % best["flops_saved_pct"],
    })
    lines.append(f"| speedup | 1.34x (v2), 1.21x (v1), 1.61x (cost model) | {ours['speedup']} |")
    lines.append(f"| KV memory | 1.87x less (v2), 2.44x (cost model) | {ours['kv']} |")
    lines.append(f"| FLOPs | 24.6% fewer (v2) | {ours['flops']} |")
    return "\n".join(lines)


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, rows in results.items():
        xs = sorted(rows)
        ax.plot(xs, [rows[x]["ms"] for x in xs], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="history (frames)", ylabel="ms per step", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    load_start = os.getloadavg()[0]  # other work on the machine skews every timing: recorded with them
    other_load = OtherLoad()  # CPU cores other processes use meanwhile (the load average counts ours too)
    try:
        checkpoints = sorted({int(x) for x in args.history.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"kv-vla bench paper: --history must be comma-separated integers, "
                         f"got {args.history!r}") from None
    if not checkpoints or checkpoints[0] < args.repeats + 3 or args.repeats < 1 or args.budget_frames < 3:
        raise SystemExit("kv-vla bench paper: need --repeats >= 1, history lengths > repeats + 2, --budget-frames >= 3")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("kv-vla bench paper: --device cuda but no GPU is available")
    torch.set_num_threads(args.threads)
    max_full = args.max_full_frames or (max(checkpoints) if args.device.startswith("cuda") else 256)
    if args.dtype == "float16" and not args.device.startswith("cuda"):
        raise SystemExit("kv-vla bench paper: --dtype float16 needs a CUDA device; use bfloat16 or float32 on a CPU")
    default = ("full,gated,gated-static,gated-static-compiled" if args.device.startswith("cuda")
               else "full,window,gated,gated-static")
    policies = [p.strip() for p in (args.evictions or default).split(",") if p.strip()]
    extra, prefix, name, weight_bytes = {}, PREFIX, args.backbone, None
    if args.backbone == "pi0":
        from kv_vla_ros.bench.paper_pi0 import PROMPT_TOKENS, build_pi0, pi0_forward, pi0_weight_bytes

        model, step, dtype, scale = build_pi0(args.device, args.dtype)
        text = model.config.vlm_config.text_config
        extra = dict(forward=pi0_forward(model, dtype, args.device), cache_model_config=text, hidden=text.hidden_size)
        prefix, name = PROMPT_TOKENS, f"pi0 ({scale}; + {model.config.num_inference_steps} denoising steps)"
        weight_bytes = pi0_weight_bytes(model)
        skipped = [p for p in policies if "-static" in p]
        policies = [p for p in policies if "-static" not in p]
        if skipped:
            print(f"note: {', '.join(skipped)} skipped: π0's bidirectional blocks need the dynamic cache")
    else:
        try:
            model, step, dtype = build_backbone(args.backbone, args.model, args.device, args.dtype)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"kv-vla bench paper: {exc}") from None
        text = model.config
    use_kv_vla_attention(model, "sdpa")
    try:
        configs = cache_configs(policies, step, args.budget_frames, prefix)
    except ValueError as exc:
        raise SystemExit(f"kv-vla bench paper: {exc}") from None
    results = measure(model, configs, step, checkpoints, args.repeats, max_full, args.device, dtype, prefix=prefix,
                      **extra)
    title = (f"{name} backbone ({text.num_hidden_layers} layers, hidden {text.hidden_size}, "
             f"{step} tokens/step, {str(dtype).removeprefix('torch.')}, {args.device}), "
             f"budget {args.budget_frames} steps")
    table = ratios(results)
    bandwidth = floors.memory_bandwidth(args.device)
    flops_per_s = floors.matmul_throughput(args.device, dtype)
    floors.add_floors(table, weight_bytes or floors.weight_bytes_read(model), bandwidth, flops_per_s)
    flat = floors.flatness(table)
    on_gpu = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(args.device) if on_gpu else f"CPU ({args.threads} threads)"
    md = markdown(table, title) + "\n" + floors.floors_markdown(table, flat, device_name, bandwidth, flops_per_s)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_{args.backbone}")
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(args), "title": title, "tokens_per_step": step, "table": table, "paper": PAPER,
                   "device": device_name, "load_average": [load_start, os.getloadavg()[0]],
                   "other_cpu_cores": other_load.cores(),
                   "bandwidth_bytes_per_s": bandwidth, "matmul_flops_per_s": flops_per_s, "flatness": flat},
                  f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md + "\n")
    plot(results, stem + ".png", title)
    print(md)
    print(f"wrote {stem}.json, .md, .png")
    return 0
