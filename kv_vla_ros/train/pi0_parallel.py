"""``kv-vla train --bags --workers N`` (π0): the same training as one process (``pi0_train``), data-parallel
over N Ray workers joined in a torch.distributed group (``kv_vla_ros.parallel.data_parallel``).

What each worker does (`train_worker`, shipped to the workers by name):

1. **Its share of the bags** (shard rule): bag ``i`` of the ``--bags`` list (``bag_paths`` order)
   belongs to worker ``i % N``. The worker reads its bags one episode at a time
   (``iter_bag_episodes``) and writes each episode to ``OUT/.episode_cache/`` (safetensors: uint8
   frames, states, actions), adding the per-dimension sums the normalization statistics need. A
   fleet's recordings split into many bags spread evenly; one bag is one worker's reading.
2. **One index and one set of statistics**: the workers exchange their shares' episode lists and
   sums (``all_gather``), refuse a bag whose cameras/state/action differ from the first bag's (as
   one process does), and compute the same statistics and episode order as ``read_bags``.
3. **Training** (``train_pi0`` with a `Collective`): sample ``k`` of global step ``s`` is computed by
   worker ``k % N`` from the episode its generator ``(seed, s, k)`` draws, read from the cache
   through an LRU of ``cache_episodes`` decoded episodes: the memory of a worker is bounded by that
   LRU, not by the number of bags. Gradients are summed over the workers, rank 0 writes the
   checkpoints (the same ``checkpoint/`` as one process, so ``--resume`` works with any worker
   count), ``train_log.jsonl`` and the curves. The cache is removed after a finished run.

``OUT`` and the bags must be paths every worker sees (on a cluster: a shared file system).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from kv_vla_ros.data.errors import BagError
from kv_vla_ros.train.bag_episodes import RecordedEpisode, episode_signature, iter_bag_episodes
from kv_vla_ros.train.collective import Collective

CACHE_DIR = ".episode_cache"


def save_episode(path: Path, ep: RecordedEpisode) -> None:
    from safetensors.numpy import save_file

    arrays = {"frames": np.ascontiguousarray(ep.frames), "actions": np.ascontiguousarray(ep.actions)}
    if ep.states is not None:
        arrays["states"] = np.ascontiguousarray(ep.states)
    save_file(arrays, str(path), metadata={"instruction": ep.instruction, "source": ep.source})


def load_episode(path: Path) -> RecordedEpisode:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return RecordedEpisode(meta["instruction"], arrays["frames"], arrays.get("states"), arrays["actions"],
                           meta["source"])


def _sums(ep: RecordedEpisode) -> dict[str, np.ndarray]:
    out = {"n": np.array([len(ep)], np.float64), "a1": ep.actions.sum(0, dtype=np.float64),
           "a2": (ep.actions.astype(np.float64) ** 2).sum(0)}
    if ep.states is not None:
        out.update(s1=ep.states.sum(0, dtype=np.float64), s2=(ep.states.astype(np.float64) ** 2).sum(0))
    return out


def cache_share(bags: list[str], topics, image_size, control_rate_hz, cache: Path, rank: int, world: int) -> list:
    """This worker's bags (``i % world == rank``) streamed into ``cache``: per bag ``{"bag": i,
    "episodes": [(file, steps)], "signature", "sums", "refused"}``."""
    out = []
    for i in range(rank, len(bags), world):
        row = {"bag": i, "episodes": [], "signature": None, "sums": None, "refused": None}
        try:
            for j, ep in enumerate(iter_bag_episodes(bags[i], topics, image_size, control_rate_hz)):
                file = cache / f"bag{i:06d}_ep{j:06d}.safetensors"
                save_episode(file, ep)
                row["episodes"].append((str(file), len(ep)))
                row["signature"] = row["signature"] or episode_signature(ep)
                sums = _sums(ep)
                row["sums"] = sums if row["sums"] is None else {k: row["sums"][k] + v for k, v in sums.items()}
            if not row["episodes"]:
                raise BagError(f"bag {bags[i]}: no episode with at least 2 steps and recorded actions on "
                               f"{topics.action}")
        except BagError as exc:
            row.update(episodes=[], refused=str(exc))
        out.append(row)
    return out


def merge_shares(rows: list[dict], image_topic: str) -> tuple[list[tuple[str, int]], dict, list[str]]:
    """``(episodes in read_bags' order, statistics, refusal lines)`` from every worker's share rows."""
    episodes, refused, first, total = [], [], None, None
    for row in sorted(rows, key=lambda r: r["bag"]):
        if row["refused"]:
            refused.append(row["refused"])
            continue
        if first is not None and row["signature"] != first:
            refused.append(f"bag #{row['bag']}: {image_topic} and the other topics give {row['signature']}, "
                           f"the earlier bags {first}")
            continue
        first = first or row["signature"]
        episodes += row["episodes"]
        total = row["sums"] if total is None else {k: total[k] + v for k, v in row["sums"].items()}
    if not episodes:
        raise ValueError(f"--bags: no usable bag among {len(rows)} ({len(refused)} refused)")
    n = total["n"][0]
    stats = {}
    for key, (s1, s2) in {"actions": ("a1", "a2"), "state": ("s1", "s2")}.items():
        if s1 in total:
            mean = total[s1] / n
            std = np.sqrt(np.maximum(total[s2] / n - mean ** 2, 0.0))
            stats[f"{key}_mean"], stats[f"{key}_std"] = mean.tolist(), std.tolist()
    return episodes, stats, refused


class EpisodeFiles:
    """The training set as a sequence of ``StreamEpisode`` read from the cache on demand, the last
    ``capacity`` decoded ones kept (least recently used dropped first)."""

    def __init__(self, files: list[str], policy, aux_tail: float, capacity: int):
        self.files, self.policy, self.aux_tail, self.capacity = files, policy, aux_tail, max(1, capacity)
        self._kept: OrderedDict[int, object] = OrderedDict()
        self.loads = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from kv_vla_ros.train.pi0_train import stream_episode

        if i in self._kept:
            self._kept.move_to_end(i)
            return self._kept[i]
        ep = stream_episode(self.policy, load_episode(Path(self.files[i])), self.aux_tail)
        self.loads += 1
        self._kept[i] = ep
        if len(self._kept) > self.capacity:
            self._kept.popitem(last=False)
        return ep


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_worker(cfg, bags: list[str], topics, image_size, control_rate_hz, out: str, resume: bool,
                 cache_episodes: int) -> dict:
    """One data-parallel worker of ``kv-vla train --bags`` (π0); see the module doc. Returns its figures."""
    from kv_vla_ros.train.pi0_train import train_pi0

    comm = Collective()
    out = Path(out)
    cache = out / CACHE_DIR
    if comm.is_main:
        shutil.rmtree(cache, ignore_errors=True)  # a cache left by a run that died: read afresh
        cache.mkdir(parents=True)
    comm.barrier()
    t0 = time.perf_counter()
    rows = cache_share(bags, topics, image_size, control_rate_hz, cache, comm.rank, comm.world)
    read_s = time.perf_counter() - t0
    episodes, stats, refused = merge_shares([r for share in comm.gather(rows) for r in share], topics.image)
    files = [f for f, _ in episodes]
    store: list[EpisodeFiles] = []

    def stream_data(policy):
        store.append(EpisodeFiles(files, policy, cfg.aux_tail, cache_episodes))
        return store[0]

    t1 = time.perf_counter()
    train_pi0(cfg, [load_episode(Path(files[0]))], out, resume=resume, progress_bar=False, log=lambda *a: None,
              stats=stats, stream_data=stream_data)
    train_s = time.perf_counter() - t1
    comm.barrier()
    if comm.is_main:
        shutil.rmtree(cache, ignore_errors=True)
    return {"rank": comm.rank, "bags_read": len(rows), "read_s": round(read_s, 2), "train_s": round(train_s, 2),
            "episodes": len(files), "steps": sum(s for _, s in episodes), "refused": refused,
            "episode_loads": store[0].loads if store else 0, "peak_rss_mb": round(peak_rss_mb(), 1)}


def log_progress(out: Path, total: int, show: bool):
    """A poll function for the driver: a bar over the steps rank 0 has logged (``train_log.jsonl``)."""
    from kv_vla_ros.progress import progress_bar

    bar = progress_bar(total=total, desc="train π0", disable=not show)
    path = out / "train_log.jsonl"

    def poll() -> None:
        try:
            step = json.loads(path.read_text().splitlines()[-1]).get("step", 0)
        except (OSError, IndexError, ValueError):  # no log yet, or a line being written
            return
        bar.update(max(0, step - bar.n))

    poll.close = bar.close
    return poll


__all__ = ["CACHE_DIR", "EpisodeFiles", "cache_share", "load_episode", "log_progress", "merge_shares",
           "peak_rss_mb", "save_episode", "train_worker"]
