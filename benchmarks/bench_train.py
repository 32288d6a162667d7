"""Training throughput of the tiny presets on this CPU, and where a step's time goes.

For tiny-gpt2-adamw and tiny-resnet20-adamw (plain and rotational) it times, in
one process and interleaved step by step:
    forward+backward   the model on one batch
    optimizer          optimizer.step()
    recorder           DynamicsRecorder.before_step + after_step (+ its drain, amortised)
and prints tokens/s or images/s of the whole step and each part's share. The
recorder runs on every step here, while a real run records every
dynamics_interval steps (5 for tiny presets): its share in a run is that much lower.

Then the cost of live metrics (rotsweep.store: a part file and status.json at every eval
between checkpoints): whole tiny runs through train.run, with an eval every 10 steps and no
checkpoint before the end, alternately as they are and with the live writes switched off
(checkpoint-only, as before live metrics); the median wall time of each and their ratio, and
the time spent in the live writes as a share of the live runs' wall time (the steadier number
on a loaded machine).

    .venv/bin/python benchmarks/bench_train.py [--steps 60] [--threads 1] [--live-repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rotsweep import train
from rotsweep.data import load_dataset
from rotsweep.dynamics import DynamicsRecorder
from rotsweep.models import build_model, param_groups
from rotsweep.optim import build_optimizer
from rotsweep.presets import preset
from rotsweep.train import rotational_options


def measure(name: str, steps: int, rotational: bool) -> dict:
    config = preset(name, rotational=rotational)
    data = load_dataset(config.dataset, seed=0, block_size=config.block_size, **config.dataset_options)
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=data.num_classes, vocab_size=data.vocab_size,
                        block_size=config.block_size, tiny=True, **config.model_options)
    optimizer = build_optimizer(config.optimizer, param_groups(model, config.weight_decay), lr=config.lr,
                                weight_decay=config.weight_decay, betas=(config.beta1, config.beta2),
                                momentum=config.momentum, **rotational_options(config))
    recorder = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=16)
    batches = data.train_batches(config.batch_size, seed=0)
    spent = {"forward+backward": 0.0, "optimizer": 0.0, "recorder": 0.0}
    samples = 0
    for step in range(steps + 5):  # the first 5 steps warm up allocators and caches
        inputs, targets = next(batches)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
        backward_done = time.perf_counter()
        recorder.before_step(step)
        before_done = time.perf_counter()
        optimizer.step()
        step_done = time.perf_counter()
        recorder.after_step(step)
        if step % 10 == 9:
            recorder.drain()
        end = time.perf_counter()
        if step >= 5:
            spent["forward+backward"] += backward_done - start
            spent["optimizer"] += step_done - before_done
            spent["recorder"] += (before_done - backward_done) + (end - step_done)
            samples += targets.numel()
    total = sum(spent.values())
    unit = "tokens/s" if data.kind == "text" else "images/s"
    return {"run": name + (" (RV)" if rotational else ""), "rate": samples / total, "unit": unit,
            "step_ms": 1000 * total / steps, **{part: seconds / total for part, seconds in spent.items()}}


def measure_live_metrics(name: str, repeats: int) -> dict:
    """Median wall time of a whole run with and without live metric writes, interleaved."""
    config = preset(name, steps=200, eval_interval=10, checkpoint_interval=10_000, train_log_interval=10)
    live_write = train.Trainer.write_live_metrics
    timed: dict[str, list[float]] = {"live": [], "checkpoint-only": []}
    write_seconds, writes, counting = 0.0, 0, False

    def timed_write(trainer):
        nonlocal write_seconds, writes
        start = time.perf_counter()
        live_write(trainer)
        if counting:
            write_seconds += time.perf_counter() - start
            writes += 1

    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(repeats + 1):  # the first pair warms up caches and is not counted
            counting = repeat > 0
            for mode in ("live", "checkpoint-only"):
                train.Trainer.write_live_metrics = timed_write if mode == "live" else (lambda trainer: None)
                start = time.perf_counter()
                try:
                    train.run(config, Path(scratch) / f"{mode}-{repeat}")
                finally:
                    train.Trainer.write_live_metrics = live_write
                if repeat:
                    timed[mode].append(time.perf_counter() - start)
    live, plain = statistics.median(timed["live"]), statistics.median(timed["checkpoint-only"])
    # The time inside the live writes as a share of the live runs' wall time: the same cost as
    # the ratio, but measured within each run, so it does not drift with the machine's load.
    share = write_seconds / sum(timed["live"])
    return {"run": name, "live_s": live, "plain_s": plain, "ratio": live / plain,
            "write_ms": 1000 * write_seconds / max(writes, 1), "writes_per_run": writes / repeats, "share": share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--live-repeats", type=int, default=5, help="runs of each mode for the live-metrics cost")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"{args.steps} timed steps each (recorder on every step)")
    print(f"{'run':26s} {'throughput':>18s} {'step ms':>8s} {'fwd+bwd':>8s} {'optim':>7s} {'recorder':>9s}")
    for name in ("tiny-gpt2-adamw", "tiny-resnet20-adamw"):
        for rotational in (False, True):
            r = measure(name, args.steps, rotational)
            print(f"{r['run']:26s} {r['rate']:>9.0f} {r['unit']:8s} {r['step_ms']:>8.1f} "
                  f"{r['forward+backward']:>8.0%} {r['optimizer']:>7.0%} {r['recorder']:>9.0%}")
    print(f"\nlive metrics: 200-step runs, eval every 10 steps, no checkpoint before the end; "
          f"median of {args.live_repeats} interleaved runs each")
    print(f"{'run':26s} {'live s':>8s} {'ckpt-only s':>12s} {'ratio':>7s} {'ms/write':>9s} {'writes/run':>11s} "
          f"{'write share':>12s}")
    for name in ("tiny-gpt2-adamw", "tiny-resnet20-adamw"):
        r = measure_live_metrics(name, args.live_repeats)
        print(f"{r['run']:26s} {r['live_s']:>8.2f} {r['plain_s']:>12.2f} {r['ratio']:>7.3f} "
              f"{r['write_ms']:>9.2f} {r['writes_per_run']:>11.0f} {r['share']:>12.1%}")


if __name__ == "__main__":
    main()
