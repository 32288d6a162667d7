"""Time `gather` on synthetic run directories: the first gather and a re-gather with nothing changed.

    .venv/bin/python benchmarks/bench_gather.py [--runs 1000] [--repeats 2]
    .venv/bin/python benchmarks/bench_gather.py --paper [--paper-runs 50 100 200] [--big-rows 50000000]

Each run directory is what rotsweep.train writes: config.json, status.json,
metrics.parquet (240 curve rows: train loss every 5 steps, val loss and top1
every 50) and dynamics.parquet/ with two part files (4 weights x 10 recorded
steps x 5 stats x (6 reductions + 16 sampled neurons), plus 2 biases: 4,420
rows). Targets (issue 5): first gather < 10 s, unchanged re-gather < 1 s.
Each repeat gathers a fresh copy of the sweep from scratch, again with nothing
changed, then once more after touching one run (no target: it rewrites the tables).

--paper gathers paper-shaped sweeps instead (issue 14): runs shaped like the ResNet-18
imbalance runs (352 records x (21 weights x 111 rows + 40 vectors) = 834,592 dynamics
rows, one part per 50 records) at 50, 100 and 200 runs, then one run shaped like
Figure 3's GPT-2 (records every 10 steps, 50 weights, 100 vectors, one part per 500
steps) with about 50 million rows, whose dynamics figure (rotsweep plot dynamics) is then
drawn from it. Each gather runs in its own process, which reports its peak RSS (VmHWM).
Targets: peak RSS at 50/100/200 runs within 20% of each other and <= 2 GB, the big run
and its figure within the same bound, unchanged re-gather < 1 s. The run
directories of one shape share their part files through hard links (4 distinct ones),
so the sweeps take little disk; everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rotsweep import dynamics, store
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
    parser.add_argument("--paper", action="store_true", help="the paper-shaped sweeps instead (see above)")
    parser.add_argument("--paper-runs", type=int, nargs="*", default=[50, 100, 200])
    parser.add_argument("--big-rows", type=int, default=50_000_000, help="rows of the Figure 3 GPT-2-shaped run")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # gather this sweep and report, in its own process
    parser.add_argument("--plot", action="store_true", help=argparse.SUPPRESS)  # the child also draws the dynamics
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.plot)
    elif args.paper:
        paper(args.paper_runs, args.big_rows)
    else:
        small(args.runs, args.repeats)


def small(runs: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        made, _, template = timed(lambda: make_sweep(Path(tmp), runs))
        print(f"made {runs} run directories in {made:.1f} s (not timed below)")
        print("wall time (CPU time of this process, all threads); the machine may be shared, so compare both")
        print(f"{'repeat':>6} {'first gather':>22} {'/ target':>9} {'re-gather':>20} {'/ target':>9} "
              f"{'one run touched':>22}")
        for repeat in range(repeats):
            sweep = Path(tmp) / f"copy{repeat}"
            shutil.copytree(template, sweep)
            first, first_cpu, report = timed(lambda: gather(sweep))
            again, again_cpu, second = timed(lambda: gather(sweep))
            assert report.read == runs and not report.problems, report.format()
            assert second.read == 0 and not second.written, second.format()
            os.utime(next(store.runs_dir(sweep).iterdir()) / store.STATUS_FILE)
            touched, touched_cpu, third = timed(lambda: gather(sweep))
            assert third.read == 1, third.format()
            print(f"{repeat:>6} {first:>8.2f} s ({first_cpu:5.2f} cpu) {first / FIRST_TARGET_S:>9.2f} "
                  f"{again:>7.3f} s ({again_cpu:5.3f} cpu) {again / REGATHER_TARGET_S:>9.2f} "
                  f"{touched:>8.2f} s ({touched_cpu:5.2f} cpu)")
            rows = {name: rows_of(path) for name, path in report.outputs.items()}
            shutil.rmtree(sweep)
        print(f"rows: {rows}")


def rows_of(path: Path) -> int:
    """Rows of an output: a file, or the files of dynamics.parquet/."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return sum(pq.read_metadata(file).num_rows for file in files)


# --- Paper-shaped sweeps -----------------------------------------------------------------------

PEAK_RSS_TARGET_MB = 2048
PEAK_RSS_SPREAD = 0.20


@dataclass(frozen=True)
class Shape:
    """The dynamics of one kind of run, as a DynamicsRecorder writes them."""

    model: str
    weights: int  # tensors with ndim >= 2: 111 rows per record (5 stats x (6 + 16 samples) + fan_in)
    vectors: int  # biases and gains: one rms_update row per record
    interval: int  # dynamics_interval
    records_per_part: int  # checkpoint_interval / dynamics_interval

    def rows_per_record(self) -> int:
        return self.weights * (len(STATS) * (len(REDUCTIONS) + SAMPLES) + 1) + self.vectors

    def record_rows(self) -> pd.DataFrame:
        """One record's rows (step 0) in the recorder's order: model order, then stat, reduction, neuron."""
        rows = []
        for w in range(self.weights):
            param = f"layers.{w}.weight"
            for stat in STATS:
                rows += [(param, stat, reduction, -1) for reduction in REDUCTIONS]
                rows += [(param, stat, "sample", neuron) for neuron in range(SAMPLES)]
            rows.append((param, dynamics.FAN_IN, "layer", -1))
        rows += [(f"layers.{v}.bias", "rms_update", "layer", -1) for v in range(self.vectors)]
        return pd.DataFrame(rows, columns=["param", "stat", "reduction", "neuron"])


RESNET18 = Shape("resnet18", weights=21, vectors=40, interval=100, records_per_part=50)
GPT2 = Shape("gpt2", weights=50, vectors=100, interval=10, records_per_part=50)


def write_paper_run(sweep: Path, config: RunConfig, shape: Shape, records: int, rng: np.random.Generator) -> Path:
    """A finished run directory of `records` records, with its parts written by rotsweep.dynamics.write_part."""
    directory = store.run_dir(sweep, config.run_id)
    total = records * shape.interval
    store.write_text(directory / store.CONFIG_FILE, config.canonical_json() + "\n")
    store.write_status(directory, "done", step=total, total_steps=total, warmup_steps=0, wall_s=3600.0)
    store.write_parquet(directory / store.METRICS_FILE, metrics_table(rng, steps_per_epoch=max(1, total // 10)))
    one = shape.record_rows()
    for first in range(0, records, shape.records_per_part):
        count = min(shape.records_per_part, records - first)
        steps = (first + np.arange(count)) * shape.interval
        part = pd.DataFrame({
            "step": np.repeat(steps, len(one)),
            **{column: np.tile(one[column].to_numpy(), count) for column in one.columns},
            "value": rng.lognormal(-4, 0.5, count * len(one)),
        })[list(dynamics.COLUMNS)]
        part.loc[part["stat"] == dynamics.FAN_IN, "value"] = 576.0  # C of a 3x3 conv over 64 channels
        dynamics.write_part(directory / store.DYNAMICS_DIR, part)
    return directory


def paper_config(shape: Shape, records: int, seed: int) -> RunConfig:
    return RunConfig(model=shape.model, steps=records * shape.interval, optimizer="adamw", lr=1e-3,
                     weight_decay=0.1, schedule="constant", seed=seed, rotational=True,
                     dynamics_interval=shape.interval, checkpoint_interval=shape.interval * shape.records_per_part)


def link_run(template: Path, sweep: Path, config: RunConfig) -> None:
    """A run directory sharing the template's files through hard links, with its own config.json."""
    directory = store.run_dir(sweep, config.run_id)
    (directory / store.DYNAMICS_DIR).mkdir(parents=True)
    for path in template.rglob("*"):
        if path.is_file() and path.name != store.CONFIG_FILE:
            os.link(path, directory / path.relative_to(template))
    store.write_text(directory / store.CONFIG_FILE, config.canonical_json() + "\n")


def make_paper_sweep(root: Path, name: str, shape: Shape, records: int, runs: int, templates: list[Path]) -> Path:
    sweep = root / name
    configs = [paper_config(shape, records, seed) for seed in range(runs)]
    for index, config in enumerate(configs):
        link_run(templates[index % len(templates)], sweep, config)
    store.write_manifest(sweep, {"experiment": "bench", "model": shape.model, "scale": "paper",
                                 "runs": [config.run_id for config in configs]})
    return sweep


def peak_rss_mb() -> float:
    """This process's peak resident set so far (VmHWM)."""
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")) / 1024


def child(sweep: Path, plot: bool) -> None:
    """Gather, gather again (and draw the dynamics), report as JSON: peak RSS is this process's."""
    wall, cpu, report = timed(lambda: gather(sweep))
    again, _, second = timed(lambda: gather(sweep))
    assert not report.problems and second.read == 0 and not second.written, second.format()
    result = {"wall": wall, "cpu": cpu, "regather": again, "runs": report.runs, "peak_mb": peak_rss_mb(),
              "rows": rows_of(report.outputs["dynamics"]),
              "bytes_read": sum(f.stat().st_size for f in store.runs_dir(sweep).rglob("part-*.parquet"))}
    if plot:
        from rotsweep.analysis import figures

        result["plot_s"], _, _ = timed(lambda: figures.plot_dynamics(sweep))
        result["plot_peak_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(sweep: Path, plot: bool = False) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(sweep)] + ["--plot"] * plot, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"gathering {sweep} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paper(counts: list[int], big_rows: int) -> None:
    print(f"paper-shaped gathers; load average {os.getloadavg()[0]:.2f}; each in its own process")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        records = 352
        made, _, templates = timed(lambda: [
            write_paper_run(root / "templates", paper_config(RESNET18, records, 10_000 + k), RESNET18, records,
                            np.random.default_rng(k)) for k in range(4)])
        print(f"{RESNET18.rows_per_record() * records:,} dynamics rows per ResNet-18-shaped run "
              f"(4 distinct, written in {made:.1f} s)")
        print(f"{'sweep':>22} {'runs':>5} {'dynamics rows':>14} {'MB read':>8} {'gather s':>9} {'cpu s':>7} "
              f"{'rows/s':>11} {'re-gather s':>11} {'peak RSS MB':>12}")
        results = {}
        for count in counts:
            sweep = make_paper_sweep(root, f"resnet18-{count}", RESNET18, records, count, templates)
            result = results[count] = measure(sweep)
            show(f"ResNet-18 x {count}", result)
            shutil.rmtree(sweep)
        shutil.rmtree(root / "templates")

        big_records = round(big_rows / GPT2.rows_per_record())
        made, _, big = timed(lambda: write_paper_run(root / "gpt2", paper_config(GPT2, big_records, 0), GPT2,
                                                     big_records, np.random.default_rng(0)))
        big_result = measure(big.parent.parent, plot=True)
        show("Figure 3 GPT-2 x 1", big_result)
        print(f"(the GPT-2-shaped run: {big_records} records, written in {made:.1f} s; its dynamics figure "
              f"drawn in {big_result['plot_s']:.1f} s, peak RSS {big_result['plot_peak_mb']:.0f} MB after it)")

    peaks = [results[count]["peak_mb"] for count in counts]
    if peaks:
        spread = max(peaks) / min(peaks) - 1
        print(f"peak RSS over {counts} runs: {min(peaks):.0f}-{max(peaks):.0f} MB, spread {spread:.1%} "
              f"(target <= {PEAK_RSS_SPREAD:.0%})")
    print(f"max peak RSS {max(peaks + [big_result['peak_mb'], big_result['plot_peak_mb']]):.0f} MB "
          f"(target <= {PEAK_RSS_TARGET_MB} MB)")


def show(name: str, result: dict) -> None:
    print(f"{name:>22} {result['runs']:>5} {result['rows']:>14,} {result['bytes_read'] / 2**20:>8.0f} "
          f"{result['wall']:>9.1f} {result['cpu']:>7.1f} {result['rows'] / result['wall']:>11,.0f} "
          f"{result['regather']:>11.3f} {result['peak_mb']:>12.0f}")


if __name__ == "__main__":
    main()
