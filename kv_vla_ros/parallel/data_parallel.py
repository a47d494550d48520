"""Data-parallel training on Ray: N worker processes joined in one torch.distributed process group.

``run_data_parallel(fn, args, config)`` starts ``config.workers`` Ray actors (the runner's own
launch, `ray_launch.RayLaunch`: a private local runtime, or ``config.ray_address``'s cluster), joins
them in a process group (gloo on CPU; nccl when the workers train on GPUs, ``backend="nccl"``)
rendezvousing at rank 0's node, runs ``fn(*args)`` in every one of them at once and returns their
results by rank. Inside ``fn``, ``torch.distributed`` is initialised: ``get_rank()``,
``get_world_size()``, ``all_reduce`` ... (what PyTorch DDP does underneath; the trainer averages the
gradients itself, see ``kv_vla_ros.train.collective``).

Why Ray actors and not Ray Train's ``TorchTrainer``: the installed ray (2.58, ``requirements.txt``)
has no ``ray[train]`` extras (``import ray.train`` needs pandas, pyarrow and fsspec), and the same
semantics (one process per worker, a gloo/nccl group, rank 0 writes) take a hundred lines on Ray's
core API, the one the evaluation runner already uses.

No retries: a data-parallel step needs every worker, so a worker that dies (or raises) ends the
run. The others are killed and `WorkerFailed` says, in one line, which worker and why; the run
goes on from its last checkpoint with ``--resume``. ``fn`` must be an importable module-level
function (Ray ships it by reference) and the paths in ``args`` must exist on every node.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any, Callable, Sequence

from kv_vla_ros.parallel.runner import RunnerConfig


class WorkerFailed(RuntimeError):
    """A training worker died or raised; the message is one line."""


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the actor set 1; a worker may use more (--threads)


def _free_address(state, item, tick) -> tuple[str, int]:
    """This node's address and a free TCP port on it (rank 0's rendezvous)."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def _run_rank(state, item, tick):
    """One worker: join the process group, run ``fn(*args)``, leave the group."""
    import torch.distributed as dist

    rank, world, (host, port), backend, timeout_s, fn, args = item
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        return fn(*args)
    finally:
        dist.destroy_process_group()


def _one_line(exc: BaseException) -> str:
    """The root cause of a Ray error on one line (a raised exception: its type and message)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        exc = cause
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


FAILURE_GRACE_S = 5.0


def _failure_line(failures: dict, where: list, world: int, ray) -> str:
    """One line: the worker that died (a lost process first), its error, and how many others failed."""
    died = [r for r, e in failures.items() if isinstance(e, ray.exceptions.RayActorError)]
    rank = min(died) if died else min(failures)
    pid, node = where[rank]
    verb = "died" if died else "failed"
    others = len(failures) - 1
    tail = f" ({others} other worker(s) stopped with it)" if others else ""
    return f"training worker {rank} of {world} (pid {pid}, node {node[:8]}) {verb}: {_one_line(failures[rank])}{tail}"


def run_data_parallel(fn: Callable, args: Sequence, config: RunnerConfig, threads: int = 1, backend: str = "gloo",
                      timeout_s: float = 1800.0, poll: Callable[[], None] | None = None,
                      placement: list | None = None) -> list[Any]:
    """``[fn(*args) on rank r for r in range(workers)]``, the ranks running at once in one process group.

    Args:
        config: ``workers`` (>= 1; None: one per CPU of the cluster or machine) and ``ray_address``.
        threads: torch threads per worker.
        backend: ``gloo`` (CPU tensors) or ``nccl`` (each worker then asks Ray for one GPU).
        timeout_s: how long a collective waits for the others before it fails.
        poll: called about every second in this process while the workers run (a progress bar).
        placement: filled with ``(pid, Ray node id)`` per rank, once the workers are up.
    Raises:
        WorkerFailed: one line naming the worker (rank, pid, node) and its error.
    """
    from kv_vla_ros.parallel.ray_launch import RayLaunch
    from kv_vla_ros.parallel.runner import default_workers

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected gloo or nccl, got {backend!r}")
    cfg = RunnerConfig(workers=config.workers, ray_address=config.ray_address, retries=0,
                       object_store_mb=config.object_store_mb, log_to_driver=config.log_to_driver, progress=False)
    import sys

    ray = sys.modules.get("ray")
    own = not cfg.ray_address and not (ray is not None and ray.is_initialized())
    workers = cfg.workers or (default_workers() if own else None)
    launch = RayLaunch(cfg, _set_threads, (int(threads),), workers, own, local_cpus=workers or 1,
                       gpus_per_actor=1 if backend == "nccl" else 0)
    try:
        launch.ready(None)
        ray, actors = launch.ray, launch.actors
        world = len(actors)
        rendezvous = ray.get(actors[0].run.remote(_free_address, 0, None))[-1]
        where = ray.get([a.where.remote() for a in actors])
        if placement is not None:
            placement[:] = where
        refs = [a.run.remote(_run_rank, r, (r, world, rendezvous, backend, timeout_s, fn, tuple(args)))
                for r, a in enumerate(actors)]
        results: list[Any] = [None] * world
        pending = dict(zip(refs, range(world)))
        failures: dict[int, BaseException] = {}
        while pending and not failures:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if poll is not None:
                poll()
            for ref in done:
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)[-1]
                except Exception as exc:  # a dead process (RayActorError) or fn raising (RayTaskError)
                    failures[rank] = exc
        if failures:
            # the others fail within moments (their collectives lose a peer): wait for that, then name
            # the worker that died, not one that only lost its peer
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=FAILURE_GRACE_S)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:
                    failures[pending[ref]] = exc
            raise WorkerFailed(_failure_line(failures, where, world, ray))
        return results
    finally:
        launch.shutdown()


__all__ = ["WorkerFailed", "run_data_parallel"]
