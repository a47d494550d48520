"""Cache benchmark: a tiny random decoder streams 16-token frames; per-step latency and KV bytes
held against tokens seen, for full, window and gated, as ratios against full in the same run."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from kv_vla_ros.machine_load import OtherLoad
from kv_vla_ros.progress import progress_bar

from kv_vla_ros.cache import CacheConfig, make_cache


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=256, help="frames streamed per eviction (default 256)")
    parser.add_argument("--frame-tokens", type=int, default=16, help="tokens per frame (default 16)")
    parser.add_argument("--budget-frames", type=int, default=8, help="budget in frames' tokens, plus the prefix")
    parser.add_argument("--sink-tokens", type=int, default=16, help="instruction prefix length (default 16)")
    parser.add_argument("--evictions", default="full,window,gated", help="comma-separated evictions")
    parser.add_argument("--hidden", type=int, default=256, help="backbone hidden size (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="backbone layers (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", default="runs/bench_cache", help="output directory (JSON, Markdown, PNG)")
    parser.add_argument("--seed", type=int, default=0)


def tiny_backbone(hidden: int, layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=1 << 16,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def stream_lockstep(model, configs: dict[str, CacheConfig], frames: torch.Tensor, prefix: torch.Tensor) -> dict:
    """Stream ``prefix [1, P]`` then ``frames [N, 1, F]`` through one cache per policy, in lockstep.

    Policies take turns step by step, so background load on the machine hits them alike and the
    ratios stay meaningful. Returns per policy, per step: latency (s), tokens seen/held, bytes.
    """
    caches = {name: make_cache(cfg, model.config) for name, cfg in configs.items()}
    for cache in caches.values():
        model(input_ids=prefix, past_key_values=cache, use_cache=True)
    results = {name: [] for name in configs}
    for frame in progress_bar(frames, desc="streaming frames", unit="frame"):
        for name, cache in caches.items():
            t0 = time.perf_counter()
            model(input_ids=frame, past_key_values=cache, use_cache=True)
            dt = time.perf_counter() - t0
            s = cache.stats()
            results[name].append(
                {"latency_s": dt, "tokens_seen": s["tokens_seen"], "tokens_held": s["tokens_held"],
                 "bytes_held": s["bytes_held"]}
            )
    return results


def summarize(results: dict, window: int = 8) -> list[dict]:
    """Median latency over ``window`` steps ending at checkpoints of history (in frames)."""
    n = len(next(iter(results.values())))
    checkpoints = [c for c in (16, 32, 64, 128, 256, 512, 1024) if c <= n] or [n]
    table = []
    for c in checkpoints:
        row = {"frames": c, "tokens_seen": results["full"][c - 1]["tokens_seen"] if "full" in results else None}
        for policy, rows in results.items():
            lat = statistics.median(r["latency_s"] for r in rows[max(0, c - window) : c])
            row[f"{policy}_ms"] = lat * 1e3
            row[f"{policy}_held"] = rows[c - 1]["tokens_held"]
            row[f"{policy}_bytes"] = rows[c - 1]["bytes_held"]
        if "full" in results:
            for policy in results:
                if policy != "full":
                    row[f"{policy}_speedup"] = row["full_ms"] / row[f"{policy}_ms"]
                    row[f"{policy}_mem_ratio"] = row["full_bytes"] / max(1, row[f"{policy}_bytes"])
        table.append(row)
    return table


def markdown(table: list[dict], policies: list[str]) -> str:
    head = ["frames", "tokens seen"] + [f"{p} ms/step" for p in policies] + [f"{p} held" for p in policies]
    others = [p for p in policies if p != "full"]
    head += [f"full/{p} latency" for p in others] + [f"full/{p} KV bytes" for p in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r["frames"]), str(r["tokens_seen"])]
        cells += [f"{r[f'{p}_ms']:.2f}" for p in policies] + [str(r[f"{p}_held"]) for p in policies]
        cells += [f"{r.get(f'{p}_speedup', float('nan')):.2f}x" for p in others]
        cells += [f"{r.get(f'{p}_mem_ratio', float('nan')):.2f}x" for p in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, rows in results.items():
        seen = [r["tokens_seen"] for r in rows]
        ax1.plot(seen, [r["latency_s"] * 1e3 for r in rows], label=policy, lw=0.8)
        ax2.plot(seen, [r["bytes_held"] / 1024 for r in rows], label=policy)
    ax1.set(xlabel="tokens seen", ylabel="ms per step", title="per-step latency")
    ax2.set(xlabel="tokens seen", ylabel="KV KiB held", title="KV memory held")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    load_start = os.getloadavg()[0]  # other work on the machine skews every timing: recorded with them
    other_load = OtherLoad()  # CPU cores other processes use meanwhile (the load average counts ours too)
    for name in ("frames", "frame_tokens", "budget_frames", "hidden", "layers", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"kv-vla bench cache: --{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    policies = [p.strip() for p in args.evictions.split(",") if p.strip()]
    model = tiny_backbone(args.hidden, args.layers, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    prefix = torch.randint(0, 512, (1, args.sink_tokens), generator=g)
    frames = torch.randint(0, 512, (args.frames, 1, args.frame_tokens), generator=g)
    budget = args.sink_tokens + args.budget_frames * args.frame_tokens
    configs = {}
    for policy in policies:
        try:
            configs[policy] = CacheConfig(
                eviction=policy, chunk_size=args.frame_tokens, recent_chunks=2, sink_tokens=args.sink_tokens,
                # window holds no prefix: give it the same number of tokens as the others
                budget_tokens=None if policy == "full" else budget,
                # threshold 0: the budget alone binds, so every policy holds the same number of tokens
                gate_threshold=0.0,
            )
        except ValueError as exc:
            raise SystemExit(f"kv-vla bench cache: {exc}") from None
    # Warm-up so that the first steps do not pay for allocator and kernel start-up.
    stream_lockstep(model, configs, frames[:4], prefix)
    results = stream_lockstep(model, configs, frames, prefix)
    table = summarize(results)
    os.makedirs(args.out, exist_ok=True)
    md = markdown(table, policies)
    with open(os.path.join(args.out, "bench_cache.json"), "w") as f:
        json.dump({"args": vars(args), "table": table, "load_average": [load_start, os.getloadavg()[0]],
                   "other_cpu_cores": other_load.cores(),
                   "steps": results}, f, indent=1)
    with open(os.path.join(args.out, "bench_cache.md"), "w") as f:
        f.write(md + "\n")
    plot(results, os.path.join(args.out, "bench_cache.png"))
    print(f"tiny Llama ({args.layers} layers, hidden {args.hidden}), {args.frame_tokens}-token frames, "
          f"budget {budget} tokens, {torch.get_num_threads()} CPU threads")
    print(md)
    print(f"wrote {args.out}/bench_cache.json, bench_cache.md, bench_cache.png")
    return 0
