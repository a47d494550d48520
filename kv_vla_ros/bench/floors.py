"""What a decode step cannot beat on a device: its memory-bandwidth floor (every weight and every
K/V byte it attends over must be read once per step) and its compute floor (its FLOPs at the
device's measured matmul throughput). Both are measured in the same run as the benchmark, on the
same device, so a ms/step figure can be read as a multiple of what the hardware allows.
"""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocation, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth(device: str | torch.device, mib: int | None = None, repeats: int = 10) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted), best of ``repeats``.
    Default size: 1 GiB on a GPU (far past its caches), 256 MiB on a CPU."""
    device = torch.device(device)
    mib = mib or (1024 if device.type == "cuda" else 256)
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() / seconds


def matmul_throughput(device: str | torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` (the best the device does on dense work)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = _best_seconds(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def weight_bytes_read(model) -> int:
    """Bytes of the weights a step reads: all parameters but the input embedding table (a step fed
    ``inputs_embeds`` never touches it; a tied table is read by the LM head and stays counted)."""
    embed = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embed
    return sum(p.numel() * p.element_size() for p in model.parameters() if tied or p is not embed)


def kv_bytes_read(cache) -> int:
    """K/V bytes a step attends over: the held tokens, or every slot of a static cache (the
    static step attends over all slots under a mask)."""
    total = 0
    for layer in cache.layers:
        allocated = getattr(layer, "allocated_bytes", None)
        if allocated is not None:
            total += allocated()
        elif hasattr(layer, "nbytes"):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None:
            total += 2 * layer.keys.numel() * layer.keys.element_size()
    return total


__all__ = ["memory_bandwidth", "matmul_throughput", "weight_bytes_read", "kv_bytes_read"]


def add_floors(table: list[dict], weight_bytes: int, bandwidth: float, flops_per_s: float) -> None:
    """Per row: bandwidth floor (weights + K/V read, over the bandwidth), compute floor (FLOPs over
    the matmul rate), and ms/step as a multiple of the bandwidth floor."""
    for r in table:
        r["floor_bw_ms"] = (weight_bytes + r["kv_bytes_read"]) / bandwidth * 1e3
        r["floor_compute_ms"] = r["flops"] / flops_per_s * 1e3
        r["x_bw_floor"] = r["ms"] / r["floor_bw_ms"]


def flatness(table: list[dict], start: int = 64) -> dict[str, dict]:
    """Per policy: ms/step and work at its last history over those at ``start`` frames (or its
    first history when it never reached ``start``): 1.0 is perfectly flat."""
    out = {}
    for policy in dict.fromkeys(r["policy"] for r in table):
        rows = sorted((r for r in table if r["policy"] == policy), key=lambda r: r["frames"])
        first = next((r for r in rows if r["frames"] >= start), rows[0])
        last = rows[-1]
        if last is first:
            continue
        out[policy] = {"from": first["frames"], "to": last["frames"], "ms_ratio": last["ms"] / first["ms"],
                       "elements_ratio": last["elements"] / max(1, first["elements"]),
                       "python_calls_ratio": last["python_calls"] / max(1, first["python_calls"])}
    return out


def floors_markdown(table: list[dict], flat: dict[str, dict], device: str, bandwidth: float, flops_per_s: float) -> str:
    lines = ["", f"**Floors on {device}**: memory bandwidth {bandwidth / 1e9:.1f} GB/s (device-to-device copy), "
             f"matmul {flops_per_s / 1e9:.1f} GFLOP/s", "",
             "| policy | history (frames) | ms/step | bandwidth floor ms | x bandwidth floor | compute floor ms "
             "| aten ops/step | elements/step | Python calls/step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['policy']} | {r['frames']} | {r['ms']:.2f} | {r['floor_bw_ms']:.3f} "
                     f"| {r['x_bw_floor']:.2f}x "
                     f"| {r['floor_compute_ms']:.3f} | {r['aten_ops']} | {r['elements']} | {r['python_calls']} |")
    lines += ["", "| policy | flatness: history | ms/step ratio | elements ratio | Python calls ratio |",
              "|---|---|---|---|---|"]
    for policy, f in flat.items():
        lines.append(f"| {policy} | {f['from']} -> {f['to']} frames | {f['ms_ratio']:.3f} | {f['elements_ratio']:.3f} "
                     f"| {f['python_calls_ratio']:.3f} |")
    return "\n".join(lines)


__all__ += ["add_floors", "flatness", "floors_markdown"]
