"""One training run: a RunConfig and a directory in, the run's files out.

    run_dir/config.json        the RunConfig (written once; a different config is refused)
    run_dir/status.json        pending | running | done | diverged | failed | preempted, step, wall time
    run_dir/metrics.parquet    long table: step, epoch, split, metric, value (rows up to the checkpoint)
    run_dir/metrics.live/      the rows since the checkpoint, one part per eval; store.read_metrics
                               reads both (see store)
    run_dir/dynamics.parquet/  long table of rotsweep.dynamics, one part file per checkpoint,
                               each recorded in its _parts.json (dynamics.write_part)
    run_dir/checkpoint.pt      model, optimizer, recorder and RNG state, metrics so far, thread count
    run_dir/log.txt            human-readable log, tracebacks of failures

A run started on a directory that holds a checkpoint resumes from it and ends
with exactly the metrics of an uninterrupted run: the data order and the lr
are pure functions of the step, RNG state is checkpointed, the run keeps the
intra-op thread count it started with, and everything measured after the
checkpoint is discarded and measured again.

A run may also spread over several processes (torch.distributed, DDP; see
rotsweep.distributed): the same numbers, the batch shared out between the ranks,
and rank 0 alone writing the files above. It resumes with any number of processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rotsweep import distributed, dynamics, store
from rotsweep.config import RunConfig
from rotsweep.data import check_dataset, dataset_for_run
from rotsweep.dynamics import DynamicsRecorder
from rotsweep.errors import UserError
from rotsweep.models import check_model, model_for_run, param_groups
from rotsweep.optim import build_optimizer
from rotsweep.schedule import learning_rate

from rotsweep.store import (
    CHECKPOINT_FILE, DYNAMICS_DIR, FINISHED_STATUSES, LOG_FILE, METRICS_FILE, prepare_run_dir, read_status,
    write_status,
)


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, refused with a UserError unless it exists here; default cuda, else cpu."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= available:
            raise UserError(f"device {requested!r} is not available ({available} CUDA device(s) here); use cpu")
    elif device.type != "cpu":  # mps, xpu ...: torch.<type>.is_available() where torch has one
        backend = getattr(torch, device.type, None)
        if not (hasattr(backend, "is_available") and backend.is_available()):
            raise UserError(f"device {requested!r} is not available here; use cpu or cuda")
    return device


@dataclass
class Lengths:
    """How long the run is, in optimizer steps, once the data set size is known."""

    total_steps: int
    warmup_steps: int
    steps_per_epoch: int

    @classmethod
    def of(cls, config: RunConfig, steps_per_epoch: int) -> "Lengths":
        if config.steps is not None:
            total = config.steps
        else:
            total = max(1, round(config.epochs * steps_per_epoch))
        warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
        return cls(total_steps=total, warmup_steps=warmup, steps_per_epoch=max(steps_per_epoch, 1))


class RunLog:
    """Appends timestamped lines to log.txt (and echoes them when asked).

    Only rank 0 writes log.txt; the other ranks of a distributed run write only why
    they stopped, to their stderr (the job's per-task log), see `run`.
    """

    def __init__(self, path: Path, echo: bool = False, ranks: distributed.Ranks = distributed.Ranks()):
        self.path = path
        self.echo = echo
        self.ranks = ranks

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if not self.ranks.is_main:
            return
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def run(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    device: str | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    echo: bool = False,
) -> str:
    """Train (or resume) one run in run_dir; returns its final status.

    In a process of a distributed run (WORLD_SIZE set, see rotsweep.distributed) this joins
    the process group; every rank calls run() with the same arguments.
    """
    run_dir = Path(run_dir)
    # What can be refused without data or tensors is refused before anything is written.
    chosen = pick_device(device)
    check_model(config.model, config.model_options)
    check_dataset(config.dataset, config.dataset_options)
    ranks = distributed.init_from_env(chosen)
    chosen = distributed.local_device(chosen, ranks)
    if ranks.is_main:
        prepare_run_dir(config, run_dir)
        # This process is the run's only writer now: what a killed one was writing is garbage.
        for directory in (run_dir, run_dir / DYNAMICS_DIR, run_dir / store.LIVE_METRICS_DIR):
            store.remove_temporaries(directory)
    distributed.barrier(ranks)  # the others read the status only once rank 0 has checked the directory
    status = read_status(run_dir)
    if status["status"] in FINISHED_STATUSES:
        return status["status"]
    log = RunLog(run_dir / LOG_FILE, echo=echo, ranks=ranks)
    threads = torch.get_num_threads()  # a resumed run may change it (see Trainer.__init__); restored below
    try:
        return Trainer(config, run_dir, chosen, data_dir, log, ranks).train(progress=progress and ranks.is_main)
    except BaseException as error:
        # KeyboardInterrupt and SystemExit (SLURM preemption) leave a resumable run behind, and so
        # does a lost rank: nothing is wrong with the run, it resumes from its checkpoint.
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit, distributed.RankLost))
        if isinstance(error, distributed.RankLost):
            message = f"interrupted: {error}"
        else:
            message = "interrupted" if interrupted else "failed:\n" + traceback.format_exc()
        log(message)
        if not ranks.is_main:
            print(f"rank {ranks.rank}: {message}", file=sys.stderr, flush=True)
            raise
        previous = read_status(run_dir)
        write_status(
            run_dir,
            "preempted" if interrupted else "failed",
            step=previous.get("step", 0),
            total_steps=previous.get("total_steps"),
            error=None if interrupted else f"{type(error).__name__}: {error}",
            log=str(run_dir / LOG_FILE),
        )
        raise
    finally:
        torch.set_num_threads(threads)


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device, data_dir, log: RunLog,
                 ranks: distributed.Ranks = distributed.Ranks()):
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.log = log
        self.ranks = ranks
        self.micro_batches = distributed.per_rank_accumulation(config.accumulation, ranks)
        # CPU kernels split their sums over the intra-op threads, so the thread count changes the
        # rounding: a run keeps the count it started with, whatever its new allocation. Set before
        # anything is computed; the checkpoint's state is applied in load_checkpoint.
        self.checkpoint = read_checkpoint(run_dir / CHECKPOINT_FILE, device, log, set_aside=ranks.is_main)
        self.threads = (self.checkpoint or {}).get("threads") or torch.get_num_threads()
        torch.set_num_threads(self.threads)

        self.data = dataset_for_run(config, data_dir=data_dir, device=str(device))
        if config.eval_split not in self.data.eval_splits:
            raise UserError(f"{config.dataset} has no {config.eval_split!r} split to evaluate on (it has: "
                            f"{', '.join(self.data.eval_splits)}); add its file or set eval_split=val")
        micro_steps_per_epoch = self.data.steps_per_epoch(config.batch_size)
        self.lengths = Lengths.of(config, micro_steps_per_epoch // config.accumulation)

        torch.manual_seed(config.seed)
        self.model = model_for_run(config, num_classes=self.data.num_classes,
                                   vocab_size=self.data.vocab_size).to(device)
        if config.channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(
            config.optimizer, param_groups(self.model, config.weight_decay, config.weight_decay_on), lr=config.lr,
            weight_decay=config.weight_decay, betas=(config.beta1, config.beta2),
            momentum=config.momentum, eps=config.eps, **rotational_options(config),
        )
        # DDP all-reduces (averages) the gradients in backward; the optimizer, the rotational
        # wrapper and the recorder then see the same gradients on every rank.
        self.wrapped = distributed.wrap_model(self.model, device, ranks)
        self.forward = torch.compile(self.wrapped) if config.compile else self.wrapped
        # Evaluation is sharded, so ranks run different numbers of batches: it must not go through
        # DDP, whose forward may synchronise buffers between the ranks.
        self.eval_forward = self.model if ranks.distributed else self.forward
        self.recorder = (
            DynamicsRecorder(
                self.model.named_parameters(), interval=config.dynamics_interval,
                sample_neurons=config.dynamics_sample_neurons, seed=config.seed,
            )
            if config.dynamics_interval > 0 and ranks.is_main  # measures state equal on all ranks
            else None
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]

        self.step = 0
        self.metrics: list[dict] = []
        self.metrics_written = 0  # how many of self.metrics are on disk (metrics.parquet or live parts)
        self.train_losses: list[torch.Tensor] = []  # device scalars since the last log row
        self.wall_s = 0.0

    # --- the loop -------------------------------------------------------------------------

    def train(self, progress: bool = False) -> str:
        lengths = self.lengths
        resumed = self.load_checkpoint()
        self.log(
            f"{'resumed at step ' + str(self.step) if resumed else 'started'}: run {self.config.run_id}, "
            f"{lengths.total_steps} steps on {self.device} ({self.threads} intra-op threads)"
            f"{f' × {self.ranks.world_size} processes' if self.ranks.distributed else ''}, "
            f"{self.config.model} on {self.config.dataset}"
        )
        self.write_status("running")
        started = time.time()
        wall_before = self.wall_s
        batches = distributed.sharded_train_batches(
            lambda first: self.data.train_batches(self.config.batch_size, seed=self.config.seed, start_step=first),
            start_step=self.step, accumulation=self.config.accumulation, ranks=self.ranks,
        )
        bar = ProgressBar(lengths.total_steps, self.step) if progress else contextlib.nullcontext()
        with bar:
            while self.step < lengths.total_steps:
                loss = self.train_step(batches)
                self.step += 1
                self.wall_s = wall_before + time.time() - started
                if not math.isfinite(loss):
                    return self.finish_diverged(loss)
                if progress:
                    bar.update(self.step, loss)
                self.after_step()
        self.save_checkpoint()
        self.write_status("done")
        self.log(f"done in {self.wall_s:.1f} s; {self.last_metrics()}")
        return "done"

    def train_step(self, batches) -> float:
        """One optimizer step (with gradient accumulation); returns the mean micro-batch loss.

        Each rank accumulates self.micro_batches = accumulation / world size micro-batches, each
        loss divided by that count; DDP averages over the ranks in the last backward, giving the
        mean gradient over all `accumulation` micro-batches of the step.
        """
        config = self.config
        lr = learning_rate(config, self.step, self.lengths.total_steps, self.lengths.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        distributed.reseed_other_ranks(config.seed, self.step, self.ranks)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for index in range(self.micro_batches):
            inputs, targets = next(batches)
            last = index == self.micro_batches - 1
            with distributed.no_sync(self.wrapped, last):
                with self.autocast():
                    loss = self.loss(self.forward(inputs), targets)
                # The last backward all-reduces the gradients: a dead peer shows up there.
                with distributed.collective(self.ranks, "gradient all-reduce") if last else contextlib.nullcontext():
                    self.scaler.scale(loss / self.micro_batches).backward()
            total += loss.detach()
        # The mean over every rank's micro-batches, so that all ranks log and stop on divergence alike.
        mean_loss = distributed.all_reduce_sum(total, self.ranks) / config.accumulation
        # One host sync per step: needed anyway to stop a diverged run before it writes NaNs.
        loss_value = mean_loss.item()
        if not math.isfinite(loss_value):
            return loss_value
        # fp16: the gradients hold loss_scale × their value until unscaled. Unscale once, before
        # clipping and before the recorder reads them; scaler.step then does not unscale again.
        # A step whose gradients overflowed is skipped by scaler.step (and recorded as inf/nan).
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        recording = self.recorder is not None and self.recorder.should_record(self.step)
        if recording:
            self.recorder.before_step(self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if recording:
            self.recorder.after_step(self.step)
        self.train_losses.append(mean_loss)
        return loss_value

    def after_step(self) -> None:
        config, step = self.config, self.step
        last = step == self.lengths.total_steps
        if step % config.train_log_interval == 0 or last:
            self.log_train_loss()
        checkpoint = config.checkpoint_interval and step % config.checkpoint_interval == 0 and not last
        if (config.eval_interval and step % config.eval_interval == 0) or last:
            self.evaluate()
            self.log(f"step {step}/{self.lengths.total_steps}: {self.last_metrics()}")
            if not (checkpoint or last):  # those write every row themselves
                self.write_live_metrics()
        if checkpoint:
            self.save_checkpoint()
            self.write_status("running")

    def finish_diverged(self, loss: float) -> str:
        """Keep what was measured up to the divergence, and say so."""
        self.add_metric("train", "loss", loss)
        if self.ranks.is_main:
            self.write_measurements()
        self.write_status("diverged")
        self.log(f"diverged at step {self.step}: train loss {loss}")
        return "diverged"

    # --- loss and evaluation --------------------------------------------------------------

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
            label_smoothing=self.config.label_smoothing,
        )

    def add_metric(self, split: str, metric: str, value: float) -> None:
        self.metrics.append({
            "step": self.step, "epoch": self.step / self.lengths.steps_per_epoch,
            "split": split, "metric": metric, "value": float(value),
        })

    def log_train_loss(self) -> None:
        if self.train_losses:
            self.add_metric("train", "loss", torch.stack(self.train_losses).mean().item())
            self.train_losses.clear()

    @torch.no_grad()
    def evaluate(self) -> None:
        """Loss (and top-1) over the evaluation batches, shared out between the ranks and summed."""
        self.model.eval()
        # float64 sums: the same totals whichever rank evaluated which batch, up to rounding.
        sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        batches = self.data.eval_batches(
            self.config.batch_size, split=self.config.eval_split, max_batches=self.config.eval_batches)
        for inputs, targets in distributed.sharded_eval_batches(batches, self.ranks):
            with self.autocast():
                logits = self.eval_forward(inputs)
            logits = logits.reshape(-1, logits.shape[-1]).float()
            targets = targets.reshape(-1)
            sums[0] += F.cross_entropy(logits, targets, reduction="sum").item()
            sums[1] += (logits.argmax(dim=-1) == targets).sum().item()
            sums[2] += targets.numel()
        self.model.train()
        loss_sum, correct, count = distributed.all_reduce_sum(sums, self.ranks).tolist()
        loss = loss_sum / max(count, 1)
        self.add_metric("val", "loss", loss)
        if self.data.kind == "image":
            self.add_metric("val", "top1", 100.0 * correct / max(count, 1))
        else:
            self.add_metric("val", "perplexity", math.exp(min(loss, 700.0)))

    def latest_metrics(self) -> dict[str, float]:
        """The last value of every metric, as {"<split>_<metric>": value}."""
        latest: dict[str, float] = {}
        for row in self.metrics:
            latest[f"{row['split']}_{row['metric']}"] = row["value"]
        return latest

    def last_metrics(self) -> str:
        return ", ".join(f"{name} {value:.4g}" for name, value in self.latest_metrics().items())

    # --- files (written by rank 0 alone) -----------------------------------------------------

    def write_status(self, status: str) -> None:
        if self.ranks.is_main:
            write_status(self.run_dir, status, **self.status_fields())

    def status_fields(self) -> dict:
        return {
            "step": self.step,
            "total_steps": self.lengths.total_steps,
            "warmup_steps": self.lengths.warmup_steps,  # resolved from warmup_epochs when given in epochs
            "steps_per_epoch": self.lengths.steps_per_epoch,
            "wall_s": round(self.wall_s, 3),
            "threads": self.threads,
            "host": socket.gethostname(),
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "world_size": self.ranks.world_size,
            "log": str(self.run_dir / LOG_FILE),
            "latest": self.latest_metrics(),
        }

    def write_live_metrics(self) -> None:
        """Between checkpoints: the rows since the last write as a live part, and the progress.

        A checkpoint folds the parts into metrics.parquet; a resume deletes them, since
        everything past the checkpoint is measured again (store.read_metrics reads both).
        """
        # No log_train_loss() here: the train-loss rows stay those of train_log_interval, as
        # without live parts; the ones since the last eval come with the next part.
        if not self.ranks.is_main:
            return
        store.append_live_metrics(self.run_dir, self.metrics[self.metrics_written:], self.step)
        self.metrics_written = len(self.metrics)
        self.write_status("running")

    def write_measurements(self) -> None:
        """Rewrite metrics.parquet (then drop the live parts it now holds) and append the
        recorder's rows as a new dynamics part."""
        store.write_parquet(self.run_dir / METRICS_FILE, store.metrics_table(self.metrics))
        store.clear_live_metrics(self.run_dir)
        self.metrics_written = len(self.metrics)
        if self.recorder is not None:
            rows = self.recorder.drain()
            if len(rows):
                dynamics.write_part(self.run_dir / DYNAMICS_DIR, rows)

    def save_checkpoint(self) -> None:
        self.log_train_loss()
        if not self.ranks.is_main:
            return
        # Measurements first: a kill between the two leaves parts past the checkpoint,
        # which load_checkpoint discards, rather than a checkpoint with missing rows.
        self.write_measurements()
        state = {
            "step": self.step,
            "wall_s": self.wall_s,
            "threads": self.threads,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "recorder": self.recorder.state_dict() if self.recorder is not None else None,
            "metrics": self.metrics,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        with store.atomic_path(self.run_dir / CHECKPOINT_FILE) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> bool:
        # Every rank loads the same checkpoint; it holds no per-rank state (the weights, optimizer
        # and RNG states are equal on all ranks), so it resumes with any number of processes.
        state, self.checkpoint = self.checkpoint, None  # read in __init__; not kept in memory
        if state is None:
            if self.ranks.is_main:
                self.discard_measurements_after(-1)
                if (self.run_dir / METRICS_FILE).exists():  # an earlier attempt's, from a lost checkpoint
                    store.write_parquet(self.run_dir / METRICS_FILE, store.metrics_table([]))
            return False
        self.step = state["step"]
        self.wall_s = state["wall_s"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.recorder is not None and state["recorder"] is not None:
            self.recorder.load_state_dict(state["recorder"])
        self.metrics = state["metrics"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if self.ranks.is_main:
            self.discard_measurements_after(self.step)
            store.write_parquet(self.run_dir / METRICS_FILE, store.metrics_table(self.metrics))
        self.metrics_written = len(self.metrics)
        return True

    def discard_measurements_after(self, step: int) -> None:
        """Remove dynamics parts and live metric rows recorded after `step` (they will be
        recorded again). Live parts at or before `step` are in the checkpoint's metrics."""
        dynamics.discard_parts_from(self.run_dir / DYNAMICS_DIR, step)
        store.clear_live_metrics(self.run_dir)


def read_checkpoint(path: Path, device: torch.device, log: RunLog, set_aside: bool = True) -> dict | None:
    """A checkpoint's state, or None to start the run over (no checkpoint, or an unreadable one).

    Loaded with weights_only=True: torch's restricted unpickler rebuilds only
    tensors and plain containers and values, which is all save_checkpoint writes
    (no further types need allow-listing), and refuses a file that names any other
    callable (os.system, ...) before anything in it runs. A damaged file (a
    truncated copy, a disk that filled up) is set aside under a new name, and the
    run starts over rather than failing at every resume (set_aside=False: only starts
    over, for the ranks of a distributed run other than the one that moves the file).
    """
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        what = f"a pickled {refused.group(1)}" if refused else "objects other than tensors and plain values"
        raise UserError(
            f"{path} holds {what}, which a rotsweep checkpoint never does; it was not loaded. "
            "Delete it to start the run over"
        ) from None
    except Exception as error:  # zip or pickle structure broken
        if not set_aside:
            return None
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        log(f"checkpoint unreadable ({type(error).__name__}: {reason}); moved to {aside.name}, starting over")
        # One line for whoever started the run too: its results will come from a fresh start.
        print(f"warning: {path} is not a complete checkpoint (truncated?); moved to {aside.name}, "
              "starting the run over from step 0", file=sys.stderr, flush=True)
        return None


def rotational_options(config: RunConfig) -> dict:
    """The RunConfig fields of the rotational wrapper, as build_optimizer's keyword arguments."""
    if not config.rotational:
        return {}
    options = {
        "rotational": True,
        "per_neuron": config.rv_per_neuron,
        "zero_mean": config.rv_zero_mean,
        "rms_beta": config.rv_beta,
        "eta_r_from": config.rv_eta_r_from,
    }
    if config.imbalance_portion > 0:
        options.update(
            imbalance_portion=config.imbalance_portion,
            imbalance_factor=config.imbalance_factor,
            imbalance_mode=config.imbalance_mode,
            imbalance_seed=config.seed,
        )
    return options


class ProgressBar:
    """A rich progress bar with the loss and the step rate."""

    def __init__(self, total: int, completed: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} steps/s"), TimeRemainingColumn(),
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, loss=float("nan"), rate=0.0)
        self.start_step, self.start_time = completed, time.time()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step: int, loss: float) -> None:
        rate = (step - self.start_step) / max(time.time() - self.start_time, 1e-9)
        self.progress.update(self.task, completed=step, loss=loss, rate=rate)
