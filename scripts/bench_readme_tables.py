#!/usr/bin/env python3
"""The benchmark tables of docs/performance.md and docs/cache.md from the benchmarks' own JSON (as
scripts/gate_report_table.py does for the gate report), so that a table and its run cannot drift apart.

    python scripts/bench_readme_tables.py paper docs/bench/bench_openvla-small.json
    python scripts/bench_readme_tables.py cache docs/bench/bench_cache.json

`scripts/generate_docs.py` calls these on the JSON committed under docs/bench/ (the sections
``bench-paper-openvla-small``, ``bench-paper-default`` (docs/performance.md) and ``bench-cache``
(docs/cache.md)). To
refresh them, re-run the benchmarks into docs/bench/ on a quiet machine (`make bench-readme`), then
`python scripts/generate_docs.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package

# The README's bench-cache rows: the history lengths it shows.
CACHE_FRAMES = (16, 64, 128, 256)


def paper_table(data: dict) -> str:
    """bench_paper's own Markdown (table + paper comparison) and one line of what the run was."""
    from kv_vla_ros.bench.paper import markdown

    table = [{**row, "frames": int(row["frames"])} for row in data["table"]]
    head = markdown(table, data.get("title") or f"{data['args']['backbone']} backbone")
    return _busy_warning(data) + head + f"\n\nMeasured on: {data.get('device', 'unknown device')}{_load(data)}.\n"


BUSY_LOAD = 1.0  # a 1-minute load average above this on the 2-core machine: other work was running


OTHER_CORES_BUSY = 0.25  # CPU cores other processes used on average during the run: above, it shared the machine


def _busy_warning(data: dict) -> str:
    """A warning above a table whose run shared the machine (its timings are not the code's). Runs
    that recorded ``other_cpu_cores`` (CPU used by other processes) are judged by it; older runs
    by the load average, which also counts the benchmark's own threads."""
    other, load = data.get("other_cpu_cores"), data.get("load_average")
    if other is not None and other == other:
        if other <= OTHER_CORES_BUSY:
            return ""
        what = f"other processes used {other:.2f} CPU cores on average during it"
    elif load is None or max(load) <= BUSY_LOAD:
        return ""
    else:
        what = f"load average up to {max(load):.1f}"
    return (f"*Taken on a busy machine ({what}): the timings and the ratios built on them are not this code's; "
            "`make bench-readme` on a quiet machine replaces them. Tokens, bytes and FLOPs do not depend on the "
            "load.*\n\n")


def _load(data: dict) -> str:
    """How busy the machine was: CPU cores other processes used during the run (when recorded),
    and the 1-minute load average at its start and end (which counts the run's own threads)."""
    if "load_average" not in data:
        return ", load not recorded"
    start, end = data["load_average"]
    other = data.get("other_cpu_cores")
    beside = f", other processes {other:.2f} CPU cores on average" if other is not None and other == other else ""
    return f"{beside}, load average {start:.1f} at the start and {end:.1f} at the end (its own threads included)"


def paper_targets(data: dict, frames: int = 64) -> str:
    """The targets line: gated against full at ``frames`` of history, and its latency over the
    histories measured."""
    rows = {(r["policy"], int(r["frames"])): r for r in data["table"]}
    gated = rows.get(("gated", frames))
    if gated is None or "speedup" not in gated:
        return f"(no gated row against full at {frames} frames in this run)\n"
    lat = [rows[("gated", f)]["ms"] for p, f in sorted(rows) if p == "gated" and f >= frames]
    spread = 100 * (max(lat) / min(lat) - 1) if lat else float("nan")
    return _busy_warning(data) + (
            f"At {frames} frames of history, gated is {gated['speedup']:.1f}x faster per step than full "
            f"(target 3x), holds {gated['kv_reduction']:.1f}x fewer KV bytes (target 8x) and spends "
            f"{gated['flops_saved_pct']:.1f}% fewer FLOPs per step (target 60%); its per-step latency varies "
            f"by {spread:.0f}% from {frames} frames on ({', '.join(f'{v:.1f}' for v in lat)} ms; target 10%).\n")


def cache_table(data: dict) -> str:
    """bench_cache's table at the README's history lengths."""
    from kv_vla_ros.bench.cache import markdown

    args = data["args"]
    evictions = [p.strip() for p in (args.get("evictions") or args.get("policies") or "").split(",") if p.strip()]
    rows = [r for r in data["table"] if int(r["frames"]) in CACHE_FRAMES]
    return _busy_warning(data) + markdown(rows, evictions) + f"\n\nMeasured on: CPU{_load(data)}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["paper", "paper-targets", "cache"])
    parser.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
        make = {"paper": paper_table, "paper-targets": paper_targets, "cache": cache_table}[args.kind]
        sys.stdout.write(make(data))
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench_readme_tables: {args.json}: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
