"""`kv-vla bench train-scaling`: π0 training from bags (`kv-vla train --bags`) at 1 worker x 1 thread,
1 worker x 2 threads and 2 workers x 1 thread (a private local Ray runtime), and, with ``--cluster``,
2 workers x 1 thread on a two-node Ray cluster this command starts on this machine (``ray start
--head`` and a second node with ``ray start --address``, one CPU each, reached through
``--ray-address``; stopped afterwards by the process ids it started, never ``ray stop``, which would
take down every Ray on the machine). One run, ratios printed.

Samples per second: optimizer steps x ``--episodes-per-step`` over the training loop's own time
(rank 0's ``elapsed_s`` in ``train_log.jsonl`` from step 1 to the last step: without start-up,
bag reading and saving; the end-to-end wall time is reported beside it).

Memory: each worker's peak resident memory with ``--bags`` and with only its first half (a data
set half as large), in one process and on 2 workers (``--cache-episodes`` bounds what a worker
holds). Writes bench_train_scaling.json, .md and .png into --out. Every run is a subprocess (a
fresh interpreter, so the peaks are each run's own). A benchmark: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from kv_vla_ros.machine_load import OtherLoad

# runs a `kv-vla` command in this interpreter and prints its peak resident memory (MiB) last
WRAPPER = ("import resource, sys\nfrom kv_vla_ros.cli import main\nrc = main(sys.argv[1:])\n"
           "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\nsys.exit(rc)\n")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bags", nargs="+", required=True,
                        help="π0 training bags (several: bag i is read by worker i %% N); e.g. from kv-vla bag "
                             "generate --task Arm-CueCarryLong")
    parser.add_argument("--state-topic", default="/joint_states")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per timed run")
    parser.add_argument("--episodes-per-step", type=int, default=4)
    parser.add_argument("--cache-episodes", type=int, default=4, help="decoded episodes a Ray worker keeps")
    parser.add_argument("--cluster", action="store_true", help="also run on a two-node local cluster (ray start)")
    parser.add_argument("--out", default="runs/bench_train_scaling")


def _train(args, bags: list[str], out: Path, steps: int, extra: list[str]) -> dict:
    from kv_vla_ros.data.bagio import bag_paths

    cmd = [sys.executable, "-c", WRAPPER, "train", "--bags", *bags, "--out", str(out), "--state-topic",
           args.state_topic, "--max-steps", str(steps), "--episodes-per-step", str(args.episodes_per_step),
           "--log-every", str(max(2, steps)), "--minutes", "600", "--no-progress",
           "--cache-episodes", str(args.cache_episodes), *extra]
    before = OtherLoad([])
    time.sleep(2.0)
    other = before.cores()  # every process's load just before the run (nothing of ours runs then)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train {' '.join(extra)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    loop_s = last["elapsed_s"] - first["elapsed_s"]
    workers_file = out / "train_workers.json"
    ranks = json.loads(workers_file.read_text()) if workers_file.is_file() else []
    driver = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    return {"args": extra, "bags": len(bag_paths(bags)), "steps": last["step"], "wall_s": round(wall, 1),
            "loop_s": round(loop_s, 2),
            "samples_per_s": round((last["step"] - first["step"]) * args.episodes_per_step / max(loop_s, 1e-9), 3),
            "peak_rss_mb": [r["peak_rss_mb"] for r in ranks] or [round(driver, 1)],
            "driver_rss_mb": round(driver, 1), "other_load_cores_before": round(other, 2),
            "final_loss": last["loss"]}


class LocalCluster:
    """A head node and a second node on this machine (``ray start``, one CPU each), stopped by the
    process ids they started (the processes whose command line names this cluster's temp dir)."""

    def __init__(self, root: Path):
        self.temp = (root / "ray").resolve()
        self.ray = str(Path(sys.executable).parent / "ray")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> "LocalCluster":
        common = ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 1024 * 1024),
                  "--disable-usage-stats"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()),
                                                                          os.environ.get("PYTHONPATH")]))}
        subprocess.run([self.ray, "start", "--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                        "--include-dashboard", "false", "--temp-dir", str(self.temp), *common],
                       check=True, capture_output=True, env=env)
        subprocess.run([self.ray, "start", "--address", self.address, "--node-ip-address", "127.0.0.1", *common],
                       check=True, capture_output=True, env=env)
        return self

    def pids(self) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    if str(self.temp).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        out.append(int(entry))
                except OSError:
                    continue
        return out

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s, to this cluster's processes; returns how many there were."""
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while sig == signal.SIGTERM and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists()
                                                                                for p in pids):
                time.sleep(0.5)
        return len(pids)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh([r["run"] for r in rows], [r["samples_per_s"] for r in rows], color="tab:blue")
    ax.set_xlabel("training samples (episodes) per second")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.data.bagio import bag_paths

    if args.steps < 3 or args.episodes_per_step < 1:
        raise ValueError("--steps: at least 3; --episodes-per-step: at least 1")
    bags = [str(p) for p in bag_paths(args.bags)]
    if len(bags) < 2:
        raise ValueError(f"--bags: give at least 2 bags (worker i reads bag i % 2), got {len(bags)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [("1 worker x 1 thread", ["--threads", "1"]), ("1 worker x 2 threads", ["--threads", "2"]),
            ("2 workers x 1 thread (local Ray)", ["--threads", "1", "--workers", "2"])]
    rows = []
    for name, extra in runs:
        rows.append({"run": name, **_train(args, bags, out / f"run{len(rows)}", args.steps, extra)})
        print(f"{name}: {rows[-1]['samples_per_s']} samples/s", flush=True)
    if args.cluster:
        cluster = LocalCluster(out).start()
        try:
            rows.append({"run": "2 workers x 1 thread (2-node cluster, --ray-address)",
                         **_train(args, bags, out / "cluster", args.steps,
                                  ["--threads", "1", "--workers", "2", "--ray-address", cluster.address])})
        finally:
            stopped = cluster.stop()
        print(f"{rows[-1]['run']}: {rows[-1]['samples_per_s']} samples/s (cluster stopped: {stopped} processes)")
    half = bags[: len(bags) // 2]
    memory = []
    for name, subset in (("half the bags", half), ("all the bags", bags)):
        for label, extra in (("1 worker", ["--threads", "1"]), ("2 workers", ["--threads", "1", "--workers", "2"])):
            r = _train(args, subset, out / f"mem{len(memory)}", 3, extra)
            memory.append({"data": name, "run": label, "bags": r["bags"], "peak_rss_mb": r["peak_rss_mb"]})
    base = rows[0]["samples_per_s"]
    ratios = {r["run"]: round(r["samples_per_s"] / base, 3) for r in rows}
    ratios["2 workers x 1 thread / 1 worker x 2 threads"] = round(rows[2]["samples_per_s"]
                                                                  / rows[1]["samples_per_s"], 3)
    result = {"runs": rows, "ratios_to_1x1": ratios, "memory": memory, "steps": args.steps,
              "episodes_per_step": args.episodes_per_step, "cache_episodes": args.cache_episodes,
              "cpu_cores": len(os.sched_getaffinity(0))}
    (out / "bench_train_scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["| run | samples/s (loop) | vs 1x1 | wall s | peak RSS per worker (MiB) | other load (cores) |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['run']} | {r['samples_per_s']:.2f} | {ratios[r['run']]:.2f} | {r['wall_s']} | "
           f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mb'])} | {r['other_load_cores_before']} |" for r in rows]
    md += ["", "| data | run | bags | peak RSS per worker (MiB) |", "| --- | --- | --- | --- |"]
    md += [f"| {m['data']} | {m['run']} | {m['bags']} | {', '.join(f'{v:.0f}' for v in m['peak_rss_mb'])} |"
           for m in memory]
    (out / "bench_train_scaling.md").write_text("\n".join(md) + "\n")
    _plot(rows, out / "bench_train_scaling.png")
    print("\n".join(md))
    print("ratios: " + "; ".join(f"{k}: {v}" for k, v in ratios.items()))
    print(f"wrote {out}/bench_train_scaling.json, .md, .png")
    return 0


__all__ = ["LocalCluster", "configure", "run"]
