"""Time `gather` on 1,000 synthetic run directories: the first gather and a re-gather with nothing changed.

    .venv/bin/python benchmarks/bench_gather.py [--runs 1000] [--repeats 2]

Each run directory is what rotsweep.train writes: config.json, status.json,
metrics.parquet (240 curve rows: train loss every 5 steps, val loss and top1
every 50) and dynamics.parquet/ with two part files (4 weights x 10 recorded
steps x 5 stats x (6 reductions + 16 sampled neurons), plus 2 biases: 4,420
rows). Targets (issue 5): first gather < 10 s, unchanged re-gather < 1 s.
Each repeat gathers a fresh copy of the sweep from scratch, again with nothing
changed, then once more after touching one run (no target: it rewrites the tables).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rotsweep import store
from rotsweep.analysis.gather import gather
from rotsweep.config import RunConfig

FIRST_TARGET_S = 10.0
REGATHER_TARGET_S = 1.0

STEPS = 1000
WEIGHTS = ["conv1.weight", "layer1.conv.weight", "layer2.conv.weight", "fc.weight"]
BIASES = ["conv1.bias", "fc.bias"]
STATS = ["norm", "angular_update", "rms_update", "grad_norm", "radial"]
REDUCTIONS = ["layer", "mean", "rms", "std", "min", "max"]
SAMPLES = 16


def dynamics_part(rng: np.random.Generator, steps: np.ndarray) -> pa.Table:
    """The rows a DynamicsRecorder writes for these recorded steps."""
    per_step = [(param, stat, reduction, -1) for param in WEIGHTS for stat in STATS for reduction in REDUCTIONS]
    per_step += [(param, stat, "sample", neuron) for param in WEIGHTS for stat in STATS for neuron in range(SAMPLES)]
    per_step += [(param, "rms_update", "layer", -1) for param in BIASES]
    param, stat, reduction, neuron = (np.array(column) for column in zip(*per_step))
    n = len(steps) * len(per_step)
    return pa.table({
        "step": np.repeat(steps, len(per_step)),
        "param": np.tile(param, len(steps)),
        "stat": np.tile(stat, len(steps)),
        "reduction": np.tile(reduction, len(steps)),
        "neuron": np.tile(neuron, len(steps)).astype(np.int64),
        "value": rng.lognormal(-4, 0.5, n),
    })


def metrics_table(rng: np.random.Generator, steps_per_epoch: int) -> pa.Table:
    train = np.arange(5, STEPS + 1, 5)
    val = np.arange(50, STEPS + 1, 50)
    steps = np.concatenate([train, val, val])
    return pa.table({
        "step": steps,
        "epoch": steps / steps_per_epoch,
        "split": ["train"] * len(train) + ["val"] * (2 * len(val)),
        "metric": ["loss"] * len(train) + ["loss"] * len(val) + ["top1"] * len(val),
        "value": np.concatenate([rng.uniform(0.1, 2, len(train)), rng.uniform(0.2, 1, len(val)),
                                 rng.uniform(50, 95, len(val))]),
    })


def make_sweep(root: Path, runs: int) -> Path:
    rng = np.random.default_rng(0)
    sweep = root / "sweep"
    run_ids = []
    for index in range(runs):
        config = RunConfig(
            model="resnet20", steps=STEPS, optimizer=("adamw", "sgdm", "lion")[index % 3],
            lr=10 ** rng.uniform(-4, -1), weight_decay=10 ** rng.uniform(-4, -1), seed=index,
            dynamics_interval=100, checkpoint_interval=500,
        )
        directory = store.run_dir(sweep, config.run_id)
        store.write_text(directory / store.CONFIG_FILE, config.canonical_json() + "\n")
        store.write_status(directory, "done", step=STEPS, total_steps=STEPS, wall_s=60.0)
        store.write_parquet(directory / store.METRICS_FILE, metrics_table(rng, steps_per_epoch=100))
        for first in (0, 500):
            steps = np.arange(first, first + 500, 100)
            part = f"part-{steps[0]:09d}-{steps[-1]:09d}.parquet"
            store.write_parquet(directory / store.DYNAMICS_DIR / part, dynamics_part(rng, steps))
        run_ids.append(config.run_id)
    store.write_manifest(sweep, {"experiment": "bench", "model": "resnet20", "scale": "tiny", "runs": run_ids})
    return sweep


def timed(function) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process over all its threads, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        made, _, template = timed(lambda: make_sweep(Path(tmp), args.runs))
        print(f"made {args.runs} run directories in {made:.1f} s (not timed below)")
        print("wall time (CPU time of this process, all threads); the machine may be shared, so compare both")
        print(f"{'repeat':>6} {'first gather':>22} {'/ target':>9} {'re-gather':>20} {'/ target':>9} "
              f"{'one run touched':>22}")
        for repeat in range(args.repeats):
            sweep = Path(tmp) / f"copy{repeat}"
            shutil.copytree(template, sweep)
            first, first_cpu, report = timed(lambda: gather(sweep))
            again, again_cpu, second = timed(lambda: gather(sweep))
            assert report.read == args.runs and not report.problems, report.format()
            assert second.read == 0 and not second.written, second.format()
            os.utime(next(store.runs_dir(sweep).iterdir()) / store.STATUS_FILE)
            touched, touched_cpu, third = timed(lambda: gather(sweep))
            assert third.read == 1, third.format()
            print(f"{repeat:>6} {first:>8.2f} s ({first_cpu:5.2f} cpu) {first / FIRST_TARGET_S:>9.2f} "
                  f"{again:>7.3f} s ({again_cpu:5.3f} cpu) {again / REGATHER_TARGET_S:>9.2f} "
                  f"{touched:>8.2f} s ({touched_cpu:5.2f} cpu)")
            rows = {name: pq.read_metadata(path).num_rows for name, path in report.outputs.items()}
            shutil.rmtree(sweep)
        print(f"rows: {rows}")


if __name__ == "__main__":
    main()
