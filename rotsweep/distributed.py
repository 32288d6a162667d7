"""One run on several processes: torch.distributed (DDP) setup, ranks, sharded data.

A run may spread over W processes (one per GPU; gloo on CPU for testing) without
changing what it computes, so the number of processes is a resource setting, not
a RunConfig field, and does not enter the run_id:

    global batch = batch_size × accumulation              (the RunConfig, the paper's batch)
                 = micro-batch × (accumulation / W) × W   (what each of the W ranks does)

Each optimizer step consumes micro-batches k = step·A … step·A + A − 1 of the
single-process stream (A = accumulation). Rank r takes the contiguous block
step·A + r·A/W … step·A + (r+1)·A/W − 1, so the ranks never overlap and their
union is exactly the single-process sequence. DDP averages the gradients over
the ranks, each rank divides its loss by A/W, so the all-reduced gradient is the
mean over all A micro-batches, as with one process and accumulation A (the same
convention as nanoGPT's train.py, which divides gradient_accumulation_steps by
the world size). With W = 2 and accumulation 2a each rank accumulates a micro-batches;
the result equals one process accumulating 2a up to float summation order.

Two things differ from one process by more than rounding, both documented where
they happen: dropout masks (ranks other than 0 draw their own, see
reseed_other_ranks), and BatchNorm running statistics, which DDP takes from
rank 0's micro-batches (broadcast_buffers); they only enter evaluation, training
uses each micro-batch's own statistics as before.

How the processes are started is the caller's business; this module reads the
env:// convention of torch.distributed (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), which `spawn` sets for a local multi-process run and
`export_slurm_env` (submitit's TorchDistributedEnvironment) sets in a SLURM task.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from itertools import count, islice
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from rotsweep.data import seed_sequence
from rotsweep.errors import UserError

# Seconds a collective may wait for a silent rank before the job fails with an error
# (instead of hanging until the scheduler's time limit). Generous: a checkpoint write
# on rank 0 to a network file system stalls the other ranks at their next all-reduce.
TIMEOUT_ENV = "ROTSWEEP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


class RankLost(RuntimeError):
    """Another process of the run died or stopped answering: the run must be restarted from its checkpoint."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank 0 of 1 unless torch.distributed is set up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run's files (status, metrics, dynamics, checkpoint, log)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> Ranks:
    """Join the process group described by the environment (a no-op for one process).

    gloo on CPU, NCCL on GPU. The process group timeout bounds how long a rank waits for a
    dead peer; on GPU TORCH_NCCL_ASYNC_ERROR_HANDLING makes NCCL honour it by tearing the
    process down instead of hanging in a kernel.
    """
    world_size = world_size_from_env()
    if world_size == 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds the default process group into its functions'
        # default arguments when first imported, which DDP's construction does. Imported after
        # init_process_group it would keep the group, and gloo's worker threads, alive past
        # destroy_process_group; a worker still releasing the last all-reduce's tensor as Python
        # exits then aborts the process ("terminate called without an active exception"; 1 finished
        # 2-process run in 60 here, 1 in 5 when rank 0 lingers over its files). Imported before, it binds None.
        import torch.distributed.nn.functional  # noqa: F401
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend=backend, timeout=timeout)
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def local_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per rank: cuda:LOCAL_RANK when this process sees several GPUs (submitit's
    export leaves each task only its own, which is then cuda:0)."""
    if device.type != "cuda" or device.index is not None or not ranks.distributed:
        return device
    return torch.device("cuda", ranks.local_rank if torch.cuda.device_count() > 1 else 0)


def per_rank_accumulation(accumulation: int, ranks: Ranks) -> int:
    """Micro-batches each rank accumulates per optimizer step: accumulation / world size."""
    if accumulation % ranks.world_size:
        raise UserError(
            f"accumulation {accumulation} cannot be split evenly over {ranks.world_size} processes: each "
            f"optimizer step's {accumulation} micro-batches are shared out between them; run with a number "
            f"of processes that divides {accumulation}, or set accumulation to a multiple of {ranks.world_size}"
        )
    return accumulation // ranks.world_size


def sharded_train_batches(
    open_stream: Callable[[int], Iterator], *, start_step: int, accumulation: int, ranks: Ranks
) -> Iterator:
    """This rank's micro-batches, optimizer step after optimizer step, from start_step on.

    open_stream(k) is the single-process stream of micro-batches from micro-batch k on
    (a Dataset's train_batches, whose batch k depends only on (seed, k)). One process
    reads it straight through; rank r of W reopens it at its block of every step (cheap
    for the in-memory sets and token files; ImageNet then starts its DataLoader workers
    once per step, which a rank-aware sampler would avoid).
    """
    if not ranks.distributed:
        return open_stream(start_step * accumulation)
    block = per_rank_accumulation(accumulation, ranks)

    def blocks() -> Iterator:
        for step in count(start_step):
            yield from islice(open_stream(step * accumulation + ranks.rank * block), block)

    return blocks()


def reseed_other_ranks(seed: int, step: int, ranks: Ranks) -> None:
    """Give ranks 1.. their own random numbers (dropout masks) for this step.

    All ranks start from the same seed, so without this the j-th micro-batch of every
    rank would draw the same dropout mask. Rank 0 keeps the single-process stream (a
    run on one process is unchanged); the others reseed from (seed, rank, step), which
    also makes their draws resume exactly without a per-rank RNG state in the checkpoint.
    """
    if ranks.rank > 0:
        state = seed_sequence("rank generator", seed, ranks.rank, step).generate_state(1, dtype=np.uint64)[0]
        torch.manual_seed(int(state))


def sharded_eval_batches(batches: Iterable, ranks: Ranks) -> Iterator:
    """Evaluation batch i goes to rank i mod W; sums over them are then reduced with all_reduce_sum."""
    return islice(batches, ranks.rank, None, ranks.world_size)


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum over the ranks, in place (nothing to do for one process)."""
    if ranks.distributed:
        with collective(ranks, "all_reduce"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        with collective(ranks, "barrier"):
            dist.barrier()


@contextlib.contextmanager
def collective(ranks: Ranks, what: str):
    """Turn a failed collective into RankLost: with a dead peer gloo reports a closed
    connection and NCCL a timeout; either way this rank cannot go on."""
    try:
        yield
    except RuntimeError as error:  # gloo: "Connection reset by peer"; NCCL: a watchdog timeout
        if not ranks.distributed or isinstance(error, RankLost):
            raise
        raise RankLost(
            f"rank {ranks.rank} of {ranks.world_size}: {what} failed, another process of the run died or "
            f"stopped answering ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def wrap_model(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """DDP around the model for several ranks (it broadcasts rank 0's weights at construction)."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    with collective(ranks, "DDP setup"):
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(wrapped: torch.nn.Module, last_micro_batch: bool):
    """Skip DDP's gradient all-reduce on every micro-batch but the last of an optimizer step."""
    if last_micro_batch or not hasattr(wrapped, "no_sync"):
        return contextlib.nullcontext()
    return wrapped.no_sync()


def parameter_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Float64 sums of every parameter, in order: equal on all ranks iff their weights agree (to rounding)."""
    return torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()


def shutdown() -> None:
    """Leave the process group: destroying it stops its communication threads before Python exits."""
    if dist.is_initialized():
        dist.destroy_process_group()


# --- Starting the processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessFailed(RuntimeError):
    """A process of a local multi-process run raised or died (its run's log.txt / stderr says why)."""


def spawn(procs: int, function: Callable, *args, threads: int | None = None, **kwargs) -> None:
    """Run function(*args, **kwargs) in `procs` local processes forming one process group
    (torchrun's env:// convention on 127.0.0.1), CPU threads shared out between them.

    If one process raises or dies the others are terminated (torch.multiprocessing) and
    this raises ProcessFailed: a dead rank takes the whole run down, never leaves it hanging.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if procs < 1:
        raise UserError(f"the number of processes must be at least 1, not {procs}")
    threads = threads or max(1, (os.cpu_count() or 1) // procs)
    try:
        mp.start_processes(_child, args=(procs, free_port(), threads, function, args, kwargs), nprocs=procs,
                           join=True, start_method="spawn")
    except ProcessException as error:
        # A raised exception arrives as its whole traceback: its last line names it.
        last_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ProcessFailed(f"rank {error.error_index} of {procs} failed: {last_line}") from None


def _child(rank: int, procs: int, port: int, threads: int, function: Callable, args: tuple, kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(procs), LOCAL_WORLD_SIZE=str(procs),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        function(*args, **kwargs)
    finally:
        shutdown()


def export_slurm_env() -> int:
    """In a task of a multi-task submitit SLURM job, export the env:// variables (submitit's
    TorchDistributedEnvironment: master = the job's first host, a port derived from the job
    id); returns the world size (1 for a single-task job, which exports nothing)."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks == 1:
        return 1
    # CUDA_VISIBLE_DEVICES stays as SLURM set it (the job's GPUs, possibly not 0..n-1 on the host):
    # local_device then picks cuda:LOCAL_RANK among them.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return environment.num_tasks
