"""`rotsweep demo`: the paper in miniature on a laptop CPU, from launch to report.

    report = run_demo(Path("demo"))      # ~14 minutes on 2 idle cores; DIR/report.md, DIR/findings.json

The demo is the paper's pipeline at tiny scale, through the same code that runs it
at paper scale on SLURM:

1. the random walk of Appendix F (Figure 9) for AdamW, SGDM, Lion, Adam+ℓ2 and
   RV-AdamW, once per seed of WALK_SEEDS, in worker processes (rotsweep.randomwalk);
2. the tiny sweep of each experiment of EXPERIMENTS, planned and submitted by
   rotsweep.launch exactly as `rotsweep launch EXPERIMENT --scale tiny` does, the
   sweeps the findings are measured on with `--seeds` FINDING_SEEDS;
3. a progress bar over every run until all have stopped; then gather and every
   figure each sweep supports (rotsweep.analysis);
4. the paper's findings, each measured from the gathered Parquet and set beside
   the paper's claim with its effect, the effect's spread over seeds, a margin
   set by that spread, and a verdict: "shows", "does not show at tiny scale", or
   "not resolved at tiny scale" when the effect does not clear the margin (see
   section 4 below). Nothing is asserted by construction: a verdict is a
   comparison of measured numbers, and a finding that the tiny runs do not
   reproduce, or cannot tell from noise, says so;
5. DIR/report.md (figures with a line each on the paper's finding and this run's
   numbers) and DIR/findings.json (the numbers).

Every step can be repeated: random walks whose randomwalk.json exists are kept,
launching again submits only runs that are not finished (killed runs resume from
their checkpoints), gather reads only runs that changed. A demo interrupted at any
point therefore continues where it stopped when started again.

On this machine's two cores, local runs go through one sweep at a time, each in a
pool of `max_parallel` jobs: launch bounds the jobs of one sweep, so sweeps in
flight at once would multiply the processes. On SLURM every sweep is submitted at
once and the scheduler does the bounding.

quick=True is the reduced demo of the tests: the experiments the findings are
measured on (QUICK_EXPERIMENTS), runs of QUICK_OVERRIDES' length, QUICK_SEEDS and
short random walks. The overrides and seeds are part of a sweep's identity (its
manifest), so the quick sweeps live in their own directories (`-quick` suffix) and
a full demo can follow a quick one in the same DIR.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rotsweep import launch, randomwalk, store
from rotsweep.errors import UserError

# (experiment, model) of the figures of the paper, each at its tiny scale.
EXPERIMENTS = [
    ("eta-lambda", "resnet20"),  # Figure 4
    ("warmup", "gpt2"),  # Figure 5
    ("adam-vs-adamw", "resnet18"),  # Figure 6
    ("weight-std", "resnet18-ln"),  # Figure 7
    ("imbalance", "resnet18"),  # Figure 16
    ("dynamics", "gpt2"),  # Figures 3 and 13
]
# Figure 9: directory name -> (optimizer, rotational).
RANDOM_WALKS = {
    "adamw": ("adamw", False),
    "sgdm": ("sgdm", False),
    "lion": ("lion", False),
    "adam-l2": ("adam-l2", False),
    "adamw-rv": ("adamw", True),
}
# The experiments the findings are measured on (section 4) and their seeds: a verdict's margin
# comes from the spread of its effect over seeds, so they need several (`rotsweep launch
# --seeds`; the tiny sweeps' default is one). With two seeds the margin is 9 times the spread
# (t₀.₉₇₅(1) = 12.7), with three 2.5 times: three where the time allows, two (the fewest with
# a spread) for the 18-run Adam+ℓ2 / AdamW heatmap, the costliest sweep. The other sweeps draw
# figures only and keep their default seed. CPU time per run, single-threaded: GPT2 5.5 s,
# ResNet-20 9.3 s, ResNet-18 10-12 s; with the random walks (~75 s per seed) and gather, the
# demo needs ~27 min of CPU, ~14 min on two idle cores.
FINDING_SEEDS = {"eta-lambda": (0, 1, 2), "warmup": (0, 1, 2), "adam-vs-adamw": (0, 1), "weight-std": (0, 1, 2)}
WALK_SEEDS = (0, 1)  # each random walk, twice
# The warmup finding compares final losses a hundredth of a nat apart, evaluated on the tiny
# preset's 8 batches (4k tokens; every run of a seed sees the same ones). That is enough: on
# seed 0, evaluating on 32 batches moved the warmup effect by 0.0014 nats, an eighth of its
# spread over seeds (0.011), so the seed noise, not the evaluation, sets the margin.
# The quick demo: short runs evaluated on a few batches, two seeds (the fewest with a spread).
QUICK_SEEDS = (0, 1)
QUICK_EXPERIMENTS = [entry for entry in EXPERIMENTS if entry[0] in FINDING_SEEDS]
QUICK_OVERRIDES = ["steps=60", "eval_batches=4"]
QUICK_WALK_STEPS = 1500
POLL_SECONDS = 2.0
RANDOM_WALK_TOLERANCE = 0.05  # the "within 5% of Table 1"
EARLY_FRACTION = 0.1  # the RV transient: the first 10% of the steps after warmup


# --- Where things go -----------------------------------------------------------------------


def sweep_dir(out: Path, experiment: str, model: str, quick: bool) -> Path:
    return out / "sweeps" / (f"{experiment}-{model}-tiny" + ("-quick" if quick else ""))


def walks_dir(out: Path, quick: bool) -> Path:
    return out / ("randomwalk-quick" if quick else "randomwalk")


def walk_dir(out: Path, quick: bool, name: str, seed: int) -> Path:
    """Seed 0's walks sit where `rotsweep plot randomwalk` draws Figure 9 from; other seeds below seed-S/."""
    return walks_dir(out, quick) / ("" if seed == 0 else f"seed-{seed}") / name


@dataclass(frozen=True)
class DemoSweep:
    """One tiny sweep of the demo: `rotsweep launch EXPERIMENT --model MODEL --scale tiny --out PATH
    [--seeds ...] [--set ...]`."""

    path: Path
    experiment: str
    model: str
    seeds: tuple[int, ...] | None  # None: the sweep's default seeds
    overrides: tuple[str, ...]

    def plan(self) -> launch.Plan:
        # Lists, as the CLI passes them: the manifest (JSON) records them as lists and a later
        # launch must find the same identity there.
        seeds = None if self.seeds is None else list(self.seeds)
        return launch.make_plan(self.experiment, self.model, scale="tiny", out=self.path, seeds=seeds,
                                overrides=list(self.overrides))


def demo_sweeps(out: Path, quick: bool) -> list[DemoSweep]:
    """The demo's sweeps, with their seeds and, in the quick demo, QUICK_OVERRIDES."""
    sweeps = []
    for experiment, model in QUICK_EXPERIMENTS if quick else EXPERIMENTS:
        seeds = (QUICK_SEEDS if quick else FINDING_SEEDS[experiment]) if experiment in FINDING_SEEDS else None
        overrides = tuple(QUICK_OVERRIDES) if quick else ()
        sweeps.append(DemoSweep(sweep_dir(out, experiment, model, quick), experiment, model, seeds, overrides))
    return sweeps


# --- 1. Random walks -----------------------------------------------------------------------


def _walk(optimizer: str, rotational: bool, steps: int | None, seed: int, directory: Path) -> dict:
    return randomwalk.run(optimizer, steps=steps, rotational=rotational, seed=seed, out=directory)


def run_random_walks(out: Path, quick: bool, say, workers: int) -> dict[int, dict[str, dict]]:
    """seed -> walk -> randomwalk.json of every walk of RANDOM_WALKS and seed, running those that have none yet.

    A walk uses one thread, so `workers` processes run them side by side ("spawn": a
    forked child of a process that already ran torch's thread pool can hang).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    seeds = QUICK_SEEDS if quick else WALK_SEEDS
    # Longest walks first, so that no worker is left with a long one at the end.
    names = sorted(RANDOM_WALKS, key=lambda name: -randomwalk.DEFAULT_STEPS[RANDOM_WALKS[name][0]])
    todo = {(seed, name): walk_dir(out, quick, name, seed) for name in names for seed in seeds
            if not (walk_dir(out, quick, name, seed) / "randomwalk.json").is_file()}
    if todo:
        say(f"random walks: {len(todo)} of {len(seeds) * len(RANDOM_WALKS)} to run ...")
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_walk, *RANDOM_WALKS[name], QUICK_WALK_STEPS if quick else None, seed, directory)
                       for (seed, name), directory in todo.items()]
            for future in futures:
                future.result()
    return {seed: {name: store.read_json(walk_dir(out, quick, name, seed) / "randomwalk.json")
                   for name in RANDOM_WALKS} for seed in seeds}


# --- 2-3. Launch and wait ------------------------------------------------------------------


def run_progress(report: launch.SweepStatus) -> tuple[int, float]:
    """(runs stopped, steps done counted in runs) of a launch.sweep_status report."""
    stopped, steps = 0, 0.0
    for run in report.runs:
        if run.state in launch.STOPPED_STATES and run.state not in ("pending", "preempted"):
            stopped += 1
            steps += 1.0
        elif run.total_steps:
            steps += min(run.step / run.total_steps, 1.0)
    return stopped, steps


def submit_sweep(sweep: DemoSweep, executor: str, max_parallel: int) -> int:
    """Launch the sweep as `rotsweep launch` does: the number of runs submitted."""
    submission = launch.submit(sweep.plan(), executor=executor, profile_name="local", max_parallel=max_parallel)
    return submission.runs


def launch_and_wait(sweeps: list[DemoSweep], executor: str, max_parallel: int, show_progress: bool) -> int:
    """Submit the sweeps and wait until every run has stopped; returns the number of runs submitted."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    run_counts = {sweep.path: len(sweep.plan().runs) for sweep in sweeps}
    # Sweeps launched by an earlier, interrupted demo count from the start.
    progress = {path: run_progress(launch.sweep_status(path)) if store.read_manifest(path) else (0, 0.0)
                for path in run_counts}
    submitted = 0
    # Local: one sweep at a time (see the module docstring); SLURM: everything at once.
    waves = [[entry] for entry in sweeps] if launch.get_backend(executor).runs_on_this_machine else [sweeps]
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[runs]}"),
                   TimeElapsedColumn(), disable=not show_progress)
    task = bar.add_task("sweeps", total=sum(run_counts.values()), runs="")
    with bar:
        for wave in waves:
            for sweep in wave:
                submitted += submit_sweep(sweep, executor, max_parallel)
            names = ", ".join(f"{sweep.experiment} ({sweep.model})" for sweep in wave)
            while True:
                reports = {sweep.path: launch.sweep_status(sweep.path) for sweep in wave}  # only what can change
                progress.update({path: run_progress(report) for path, report in reports.items()})
                bar.update(task, completed=sum(steps for _, steps in progress.values()), description=names,
                           runs=f"{sum(stopped for stopped, _ in progress.values())}/{sum(run_counts.values())} runs")
                if all(launch.all_stopped(report) for report in reports.values()):
                    break
                time.sleep(POLL_SECONDS)
    return submitted


def stop_after_interrupt(out: Path, sweeps: list[Path], executor: str, quick: bool) -> None:
    """On Ctrl-C: stop local jobs (nothing keeps running behind the user's back) and say how to resume."""
    if launch.get_backend(executor).runs_on_this_machine:
        for sweep in sweeps:
            if store.read_manifest(sweep) is not None:
                launch.cancel(sweep)
        what = "Local jobs were stopped; finished runs are kept and stopped ones resume from their checkpoints."
    else:
        what = "The SLURM jobs keep running (`rotsweep cancel SWEEP` stops them); finished runs are kept."
    print(f"\ninterrupted. {what}\nTo continue where it stopped, run the same command again: "
          f"rotsweep demo --out {out} --executor {executor}" + (" --quick" if quick else ""))


# --- 4. Findings, measured -----------------------------------------------------------------
#
# Every finding is a comparison whose sign the paper predicts. It is measured on each seed
# separately (a seed's runs share their data set and initialisation, so they are a paired
# comparison), and the verdict weighs the mean over seeds against the spread over seeds:
#
#     effect  mean over the n seeds of the per-seed effect, positive in the paper's direction
#     noise   the spread over seeds: the sample standard deviation s of the per-seed effects
#     margin  t₀.₉₇₅(n − 1) · s / sqrt(n), the half-width of the 95% confidence interval of the
#             mean (Student's t: the per-seed effects are few and their spread is estimated)
#
# "shows" when effect > margin, "does not show at tiny scale" when effect < −margin (the
# opposite is resolved), otherwise "not resolved at tiny scale"; one seed measures no noise,
# so its margin is infinite. Findings with two conditions take, per seed, the smaller of
# the two effects (both are in the same unit): it is positive only when both hold.

SHOWS, DOES_NOT_SHOW, NOT_RESOLVED = "shows", "does not show at tiny scale", "not resolved at tiny scale"
VERDICTS = (SHOWS, DOES_NOT_SHOW, NOT_RESOLVED)

# Two-sided 95% quantiles of Student's t by degrees of freedom (tests/test_findings.py checks
# them against the t distribution); more than 30 degrees of freedom use the value for 30.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with `dof` ≥ 1 degrees of freedom (conservative past 30)."""
    return T_975[min(dof, len(T_975)) - 1]


@dataclass
class Effect:
    """A finding's effect on each seed (positive in the paper's direction) and what it lets us say."""

    per_seed: dict  # seed -> effect; NaN (a seed without the runs to compare) is left out
    unit: str

    def __post_init__(self):
        self.per_seed = {seed: float(value) for seed, value in self.per_seed.items() if _finite(value)}

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_seed.values()))) if self.per_seed else math.nan

    @property
    def spread(self) -> float:
        """Sample standard deviation over seeds (NaN below two seeds)."""
        return float(np.std(list(self.per_seed.values()), ddof=1)) if self.n >= 2 else math.nan

    @property
    def margin(self) -> float:
        return t_975(self.n - 1) * self.spread / math.sqrt(self.n) if self.n >= 2 else math.inf

    @property
    def verdict(self) -> str:
        if self.n >= 2 and self.mean > self.margin:
            return SHOWS
        if self.n >= 2 and self.mean < -self.margin:
            return DOES_NOT_SHOW
        return NOT_RESOLVED

    def describe(self) -> str:
        if self.n == 0:
            return "no effect measured"
        if self.n == 1:
            return f"effect {self.mean:+.3g} {self.unit} on one seed: no spread over seeds to set a margin"
        return (f"effect {self.mean:+.3g} {self.unit} (mean of {self.n} seeds), spread over seeds "
                f"{self.spread:.2g}, margin {self.margin:.2g} (95% CI half-width)")

    def numbers(self) -> dict:
        return {"per_seed": dict(self.per_seed), "unit": self.unit, "seeds": self.n, "effect": self.mean,
                "spread": self.spread, "margin": self.margin}


@dataclass
class Finding:
    """One of the paper's findings: its claim, what this run measured, the effect and its verdict."""

    key: str
    experiment: str  # the report section it belongs to ("randomwalk" or an experiment)
    paper: str
    measured: str  # one line with the numbers
    effect: Effect
    numbers: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.effect.verdict

    @property
    def line(self) -> str:
        """The numbers, then the effect with its spread and margin."""
        return f"{self.measured}; {self.effect.describe()}"


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def _clean(value):
    """JSON-safe numbers: NaN and inf become None, numpy scalars Python ones."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _done(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "done"]


def _best(runs: pd.DataFrame, metric: str, higher: bool) -> pd.Series | None:
    """The finished run with the best final metric, None if no finished run has one."""
    finished = _done(runs)
    finished = finished[np.isfinite(finished[metric].astype(float))]
    if finished.empty:
        return None
    return finished.loc[finished[metric].idxmax() if higher else finished[metric].idxmin()]


def _seeds(runs: pd.DataFrame):
    """(seed, that seed's runs), seeds ascending."""
    return ((int(seed), group) for seed, group in runs.groupby("seed", sort=True))


def _mean_over_seeds(per_seed: dict[int, dict], key: str) -> float:
    values = [numbers[key] for numbers in per_seed.values() if _finite(numbers.get(key))]
    return float(np.mean(values)) if values else math.nan


def finding_randomwalk(walks: dict[int, dict[str, dict]]) -> Finding:
    """Measured equilibrium rotation and norm against Table 1, per optimizer (Figure 9).

    `walks` is seed -> walk name -> randomwalk.json. A seed's effect is how far inside
    RANDOM_WALK_TOLERANCE its worst ratio is: tolerance − max over walks and (η_r, norm)
    of |measured / Table 1 − 1|.
    """
    ratios = {seed: {name: {key: result[f"{key}_measured"] / result[f"{key}_predicted"] for key in ("eta_r", "norm")}
                     for name, result in by_name.items()}
              for seed, by_name in walks.items()}
    effect = Effect({seed: RANDOM_WALK_TOLERANCE - max(abs(r - 1) for by_key in by_name.values() for r in by_key.values())
                     for seed, by_name in ratios.items()}, "(tolerance − worst distance of a ratio from 1)")
    first = next(iter(walks.values()), {})  # every seed runs the same walks
    mean_ratio = {name: {key: float(np.mean([by_name[name][key] for by_name in ratios.values()]))
                         for key in ("eta_r", "norm")} for name in first}
    betas = {name: result.get("beta2") for name, result in first.items()}
    measured = "; ".join(f"{name} η_r {r['eta_r']:.3f}×, norm {r['norm']:.3f}×" for name, r in mean_ratio.items())
    return Finding(
        "randomwalk", "randomwalk",
        f"the random walk's equilibrium rotation η_r and norm match Table 1 within {RANDOM_WALK_TOLERANCE:.0%} for "
        "every optimizer",
        f"measured / Table 1, mean over {len(walks)} seeds: {measured} (Lion β2 {betas.get('lion')})", effect,
        {"ratios_by_seed": ratios, "mean_ratios": mean_ratio, "beta2": betas, "tolerance": RANDOM_WALK_TOLERANCE},
    )


def finding_layer_spread(runs: pd.DataFrame, layers: pd.DataFrame) -> Finding:
    """Figure 6 right: per-layer rotation of the best AdamW and Adam+ℓ2 runs of each seed.

    Per seed the effect is the smaller of (Adam+ℓ2's − AdamW's std over layers of log η_r)
    and log(Adam+ℓ2's max / min layer η_r / 10): positive when Adam+ℓ2's layers are the more
    spread and span over an order of magnitude.
    """
    per_seed, effects = {}, {}
    for seed, group in _seeds(runs):
        numbers = {}
        for optimizer in ("adamw", "adam-l2"):
            best = _best(group[group["optimizer"] == optimizer], "final_val_top1", higher=True)
            if best is None:
                continue
            rotation = layers.loc[(layers["run_id"] == best["run_id"]) & (layers["eta_r"] > 0), "eta_r"]
            numbers[optimizer] = {
                "run_id": best["run_id"], "lr": best["lr"], "weight_decay": best["weight_decay"],
                "val_top1": best["final_val_top1"], "imbalance_layers": best["imbalance_layers"],
                "max_over_min_layer_eta_r": rotation.max() / rotation.min() if len(rotation) else math.nan,
            }
        per_seed[seed] = numbers
        if len(numbers) == 2:
            effects[seed] = min(numbers["adam-l2"]["imbalance_layers"] - numbers["adamw"]["imbalance_layers"],
                                math.log(numbers["adam-l2"]["max_over_min_layer_eta_r"] / 10))
    effect = Effect(effects, "(log η_r)")
    summary = {optimizer: {key: _mean_over_seeds({s: n[optimizer] for s, n in per_seed.items() if optimizer in n}, key)
                           for key in ("imbalance_layers", "max_over_min_layer_eta_r")}
               for optimizer in ("adamw", "adam-l2")}
    measured = (("best run of each seed, mean over seeds: " + "; ".join(
        f"{name} std of log layer η_r {s['imbalance_layers']:.2f}, max/min layer η_r "
        f"{s['max_over_min_layer_eta_r']:.1f}×" for name, s in summary.items())) if effects else "no finished runs")
    return Finding(
        "layer_spread", "adam-vs-adamw",
        "AdamW rotates all layers alike, Adam+ℓ2's per-layer rotation spreads over an order of magnitude",
        measured, effect, {"per_seed": per_seed, "mean_over_seeds": summary},
    )


def early_rotation_ratio(run: pd.Series, layers: pd.DataFrame, dynamics: pd.DataFrame) -> float:
    """Geometric mean of measured / predicted rotation over the early window after warmup.

    The window is EARLY_FRACTION of the run's steps from the end of warmup (at least three
    recorded steps); the prediction is η̂_r at each step's scheduled lr; the layers are
    those gather measures (layers.parquet: weights with angular updates).
    """
    from rotsweep.analysis.results import run_config, scheduled_rotation

    config = run_config(run)
    total, warmup = int(run["total_steps"]), int(run["warmup_total_steps"])
    params = set(layers.loc[layers["run_id"] == run["run_id"], "param"])
    rows = dynamics[(dynamics["run_id"] == run["run_id"]) & dynamics["param"].isin(params)
                    & (dynamics["step"] >= warmup)]
    first_steps = np.sort(rows["step"].unique())
    end = max(warmup + EARLY_FRACTION * total, first_steps[min(2, len(first_steps) - 1)] if len(first_steps) else 0)
    rows = rows[(rows["step"] <= end) & (rows["value"] > 0)]
    if rows.empty:
        return math.nan
    predicted = scheduled_rotation(config, rows["step"], total, warmup)
    return float(np.exp(np.mean(np.log(rows["value"].to_numpy() / predicted))))


def finding_no_transient(runs: pd.DataFrame, layers: pd.DataFrame, dynamics: pd.DataFrame) -> Finding:
    """Figure 4 M/R: early rotation against η̂_r, RV-AdamW vs AdamW at the same (η, λ).

    `dynamics` holds the angular_update / mean rows. Per seed the effect is AdamW's mean
    over lrs of |log(early rotation / η̂_r)| minus the RV's, over the lrs where both ran:
    positive when the RV starts closer to its equilibrium rotation.
    """
    dynamics = dynamics[(dynamics["stat"] == "angular_update") & (dynamics["reduction"] == "mean")]
    per_seed, effects = {}, {}
    for seed, group in _seeds(_done(runs)):
        per_lr = {}
        for lr, pair_runs in group.groupby("lr"):
            pair = {("rv-adamw" if row["rotational"] else "adamw"): early_rotation_ratio(row, layers, dynamics)
                    for _, row in pair_runs.iterrows()}
            if len(pair) == 2 and all(_finite(v) for v in pair.values()):
                per_lr[f"{lr:g}"] = pair
        per_seed[seed] = per_lr
        if per_lr:
            distance = {name: np.mean([abs(math.log(pair[name])) for pair in per_lr.values()])
                        for name in ("adamw", "rv-adamw")}
            effects[seed] = distance["adamw"] - distance["rv-adamw"]
    effect = Effect(effects, "(mean abs log ratio, AdamW − RV)")
    lrs = sorted({lr for per_lr in per_seed.values() for lr in per_lr}, key=float)
    mean_ratio = {lr: {name: float(np.exp(np.mean([math.log(p[lr][name]) for p in per_seed.values() if lr in p])))
                       for name in ("adamw", "rv-adamw")} for lr in lrs}
    listing = "; ".join(f"lr {lr}: AdamW {p['adamw']:.2f}×, RV {p['rv-adamw']:.2f}×" for lr, p in mean_ratio.items())
    measured = (f"measured / η̂_r over the first {EARLY_FRACTION:.0%} of steps after warmup (geometric mean over "
                f"seeds): {listing}" if lrs else "no finished AdamW / RV-AdamW pair with early dynamics")
    return Finding(
        "no_transient", "eta-lambda",
        "the RV has no transient: from the start it rotates near η̂_r, while AdamW only approaches it",
        measured, effect,
        {"early_ratio_by_seed": per_seed, "early_ratio_by_lr": mean_ratio, "early_fraction": EARLY_FRACTION},
    )


def finding_warmup(runs: pd.DataFrame) -> Finding:
    """Figure 5: the best final validation loss with and without warmup, per optimizer.

    Per seed the effect is AdamW's loss increase without warmup minus RV-AdamW's, each
    optimizer's best lr with warmup against its best lr without (as Figure 5 compares).
    """
    runs = runs.assign(name=np.where(runs["rotational"], "rv-adamw", "adamw"),
                       warmed=(runs["warmup_steps"] > 0) | (runs["warmup_epochs"] > 0))
    per_seed, effects = {}, {}
    for seed, seed_runs in _seeds(runs):
        numbers = {}
        for name, group in seed_runs.groupby("name"):
            best = {warmed: _best(rows, "final_val_loss", higher=False) for warmed, rows in group.groupby("warmed")}
            loss = {warmed: (row["final_val_loss"] if row is not None else math.nan) for warmed, row in best.items()}
            with_warmup, without = loss.get(True, math.nan), loss.get(False, math.nan)
            numbers[name] = {"best_val_loss_warmup": with_warmup, "best_val_loss_no_warmup": without,
                             "loss_increase_without_warmup": without - with_warmup}
        per_seed[seed] = numbers
        if {"adamw", "rv-adamw"} <= set(numbers):
            effects[seed] = (numbers["adamw"]["loss_increase_without_warmup"]
                             - numbers["rv-adamw"]["loss_increase_without_warmup"])
    effect = Effect(effects, "nats (AdamW's increase − RV's)")
    summary = {name: {key: _mean_over_seeds({s: n[name] for s, n in per_seed.items() if name in n}, key)
                      for key in ("best_val_loss_warmup", "best_val_loss_no_warmup", "loss_increase_without_warmup")}
               for name in ("adamw", "rv-adamw")}
    measured = "best final val loss, mean over seeds: " + "; ".join(
        f"{name} {s['best_val_loss_warmup']:.3f} with warmup, {s['best_val_loss_no_warmup']:.3f} without "
        f"({s['loss_increase_without_warmup']:+.3f})" for name, s in summary.items())
    return Finding(
        "warmup", "warmup",
        "removing warmup hurts AdamW more than RV-AdamW (the RV has no transient to keep in check)",
        measured, effect, {"per_seed": per_seed, "mean_over_seeds": summary},
    )


def finding_weight_standardization(runs: pd.DataFrame) -> Finding:
    """Figure 7 right: spread of per-neuron rotation, LN baseline vs LN + WS, at each learning rate.

    Per seed the effect is the smallest over lrs of (baseline − WS) std over neurons of
    log η_r: positive when WS narrows the spread at every lr.
    """
    plain = _done(runs)
    plain = plain[~plain["rotational"].astype(bool)]
    per_seed, effects = {}, {}
    for seed, group in _seeds(plain):
        by_lr = {}
        for lr, pair_runs in group.groupby("lr"):
            pair = {("ws" if row["weight_standardization"] else "baseline"): row["imbalance_neurons"]
                    for _, row in pair_runs.iterrows()}
            if len(pair) == 2 and all(_finite(v) for v in pair.values()):
                by_lr[f"{lr:g}"] = pair
        per_seed[seed] = by_lr
        if by_lr:
            effects[seed] = min(pair["baseline"] - pair["ws"] for pair in by_lr.values())
    effect = Effect(effects, "(log η_r, smallest baseline − WS over lrs)")
    lrs = sorted({lr for by_lr in per_seed.values() for lr in by_lr}, key=float)
    mean_pair = {lr: {side: float(np.mean([p[lr][side] for p in per_seed.values() if lr in p]))
                      for side in ("baseline", "ws")} for lr in lrs}
    listing = ", ".join(f"lr {lr}: {p['baseline']:.2f} → {p['ws']:.2f}" for lr, p in mean_pair.items())
    measured = (f"std over neurons of log η_r (mean over layers, then over seeds), baseline → +WS: {listing}"
                if lrs else "no finished baseline / WS pair")
    return Finding(
        "weight_standardization", "weight-std",
        "Weight Standardization narrows the spread of per-neuron rotation (as the RV does by construction)",
        measured, effect,
        {"imbalance_neurons_by_seed": per_seed, "imbalance_neurons_by_lr": mean_pair},
    )


def measure_findings(walks: dict[int, dict[str, dict]], sweeps: dict[str, Path]) -> list[Finding]:
    """Every finding of the issue, measured from the random walks and the gathered sweeps."""
    from rotsweep.analysis.results import read_dynamics, read_results

    def tables(experiment: str, *names: str) -> list[pd.DataFrame]:
        return [read_results(sweeps[experiment], name) for name in names]

    return [
        finding_randomwalk(walks),
        finding_layer_spread(*tables("adam-vs-adamw", "runs", "layers")),
        # Only the rows the finding reads: the dynamics table of a sweep can be large.
        finding_no_transient(*tables("eta-lambda", "runs", "layers"),
                             read_dynamics(sweeps["eta-lambda"], stats=["angular_update"], reductions=["mean"])),
        finding_warmup(*tables("warmup", "runs")),
        finding_weight_standardization(*tables("weight-std", "runs")),
    ]


# --- 5. The report -------------------------------------------------------------------------

# What each section shows, from the paper (figure numbers of Kosson et al., ICML 2024).
SECTIONS = {
    "randomwalk": ("Figure 9: the random walk of Appendix F",
                   "A scale-invariant layer driven by pure noise settles at the equilibrium norm and rotation "
                   "of Table 1."),
    "eta-lambda": ("Figures 4 and 14: learning rate at a fixed η·λ",
                   "Along η·λ = const the equilibrium rotation is the same, yet the accuracy of both optimizers "
                   "varies with η: η also sets the update size of biases and gains (§5.2: with the RV the "
                   "performance \"varies quite a bit\"). AdamW is in addition affected by its transient, which "
                   "RV-AdamW does not have."),
    "warmup": ("Figure 5: the need for warmup",
               "Warmup keeps the initial transient in check: without it AdamW loses more than RV-AdamW."),
    "adam-vs-adamw": ("Figure 6: Adam+ℓ2 vs AdamW",
                      "AdamW's η̂_r contours follow the good region of the lr × λ heatmap; AdamW rotates every "
                      "layer alike, Adam+ℓ2 does not."),
    "weight-std": ("Figure 7: Weight Standardization",
                   "With LayerNorm, neurons rotate at different speeds; WS makes each neuron scale-invariant and "
                   "balances them, like the RV."),
    "imbalance": ("Figure 16: artificially imbalanced rotation",
                  "Slowing a portion of the neurons down (RV-AdamW) hurts, more than removing them does."),
    "dynamics": ("Figures 3 and 13: norms and rotation at a constant learning rate",
                 "Scale-invariant layers settle at Table 1's η̂_r; GPT2's linear layers need WS to do so."),
}


# A run is counted as in equilibrium once at most this fraction of its initial distance from
# equilibrium is left (e^-3 ≈ 5%), see reaches_equilibrium.
EQUILIBRIUM_RESIDUAL = math.exp(-3)


def reaches_equilibrium(run: pd.Series) -> bool:
    """Whether a runs.parquet row's weights are in equilibrium when gather's window starts.

    Eq. 16-17: each step shrinks the distance of E‖ω‖² from its equilibrium by the factor
    a = (1 − d)², where d = ηλ is the weight decay of one step for AdamW and Lion and
    ηλ/(1−α) for SGDM (whose momentum applies the ℓ2 term 1/(1−α) times; rotsweep.theory).
    Over the scheduled lrs before the window (gather.WINDOW[0] of the steps) the product of
    the a's, the distance left, must be ≤ EQUILIBRIUM_RESIDUAL.
    A rotational run is in equilibrium from its first step (Algorithm 1); a run without
    weight decay never is, nor is Adam+ℓ2 here (its s depends on the gradients, eq. 86).
    """
    from rotsweep.analysis.gather import WINDOW
    from rotsweep.analysis.results import run_config
    from rotsweep.schedule import learning_rates

    if not (_finite(run["total_steps"]) and _finite(run["warmup_total_steps"])):
        return False
    config = run_config(run)
    if config.rotational:
        return True
    if config.weight_decay <= 0 or config.optimizer not in ("adamw", "lion", "sgdm"):
        return False
    total = int(run["total_steps"])
    lrs = learning_rates(config, total, int(run["warmup_total_steps"]))[: math.ceil(WINDOW[0] * total)]
    decay = lrs * config.weight_decay / ((1 - config.momentum) if config.optimizer == "sgdm" else 1.0)
    return bool(np.prod((1 - decay) ** 2) <= EQUILIBRIUM_RESIDUAL)


def equilibrium_line(sweep: Path) -> str:
    """Measured / predicted equilibrium rotation per run variant, over the runs in equilibrium (any sweep).

    A run's value is the median over its layers of layers.parquet's eta_r_ratio (gather's
    window, 25-75% of training); a variant's is the median over its runs that reach
    equilibrium before the window (reaches_equilibrium). The others are counted, not used.
    """
    from rotsweep.analysis.figures import load_runs
    from rotsweep.analysis.results import read_results

    runs, layers = load_runs(sweep), read_results(sweep, "layers")
    per_run = layers.groupby("run_id")["eta_r_ratio"].median()
    runs = runs.assign(ratio=runs["run_id"].map(per_run).astype(float))
    runs = runs[np.isfinite(runs["ratio"])]
    if runs.empty:
        return "no equilibrium rotation measured"
    settled = runs[[reaches_equilibrium(row) for _, row in runs.iterrows()]]
    parts = [f"{variant} {group['ratio'].median():.2f}× ({len(group)} of "
             f"{int((runs['variant'] == variant).sum())} runs)" for variant, group in settled.groupby("variant")]
    return ("measured / predicted η_r in 25-75% of training (per run the median over layers, then the median over "
            "the runs in equilibrium by 25% of training, eq. 16 with ≤ 5% of the initial distance left): "
            + (", ".join(parts) if parts else "no run reaches equilibrium")
            + f"; {len(runs) - len(settled)} of {len(runs)} runs left out as not in equilibrium")


def best_line(sweep: Path) -> str:
    """The best finished run of each variant and its final metric (any sweep)."""
    from rotsweep.analysis.figures import load_runs, pick_metric

    runs = load_runs(sweep)
    metric = pick_metric(runs)
    finished = _done(runs)
    finished = finished[np.isfinite(finished[metric.column].astype(float))]
    if finished.empty:
        return "no finished runs"
    pick = "idxmax" if metric.higher_is_better else "idxmin"
    best = finished.loc[getattr(finished.groupby("variant")[metric.column], pick)()]
    counts = runs["status"].value_counts().to_dict()
    return (f"best final {metric.label} per variant: "
            + ", ".join(f"{row['variant']} {row[metric.column]:.3g} (lr {row['lr']:.3g})" for _, row in best.iterrows())
            + f"; runs: {', '.join(f'{n} {state}' for state, n in sorted(counts.items()))}")


@dataclass
class DemoReport:
    out: Path
    wall_s: float
    report: Path  # OUT/report.md
    findings_file: Path  # OUT/findings.json
    findings: list[Finding]
    submitted: int  # runs submitted by this call (0 when everything was already done)
    figures: dict[str, list[Path]]  # section -> PNG files
    skipped: dict[str, dict[str, str]]  # section -> {figure: why not drawn}


def write_report(out: Path, *, wall_s: float, quick: bool, findings: list[Finding], figures: dict[str, list[Path]],
                 sections: dict[str, str], executor: str) -> Path:
    """OUT/report.md (and the self-contained OUT/report.html, rotsweep.analysis.report): per experiment
    its figures, the paper's finding and this run's numbers."""
    from rotsweep.analysis import report

    intro = [
        f"Wall time {wall_s / 60:.1f} min ({wall_s:.0f} s) on the {executor} executor. Every run is a tiny "
        "version of the paper's (small models, synthetic data, hundreds of steps on a CPU); the findings below "
        "are measured from the gathered results, never assumed.",
        "",
        "Each finding is measured on every seed separately; its effect is the mean over seeds (positive in the "
        "paper's direction), its noise the standard deviation over seeds, and its margin the half-width of the "
        "95% confidence interval of the mean (Student's t). A finding **shows** when the effect exceeds the margin, "
        "**does not show at tiny scale** when it is below minus the margin, and is **not resolved at tiny scale** "
        "otherwise.",
        "",
        "| finding | paper | this run | effect | spread over seeds | margin | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    intro += [f"| {f.key} | {f.paper} | {f.measured} | {f.effect.mean:+.3g} {f.effect.unit} ({f.effect.n} seeds) "
              f"| {f.effect.spread:.2g} | {f.effect.margin:.2g} | **{f.verdict}** |" for f in findings]
    parts = []
    for section, (title, paper) in SECTIONS.items():
        if section not in figures:
            continue  # not part of this demo (the quick one leaves some experiments out)
        lines = [f"- **Paper:** {paper}"]
        lines += [f"- **This run:** {sections[section]}"] if section in sections else []
        lines += [f"- **Finding ({finding.verdict}):** {finding.paper}. Measured: {finding.line}."
                  for finding in findings if finding.experiment == section]
        parts.append(report.Section(title, lines, list(figures.get(section, []))))
    title = "Rotational Equilibrium in miniature" + (" (quick demo)" if quick else "")
    markdown, _ = report.write(report.Document(title, intro, parts), out)
    return markdown


# --- The demo ------------------------------------------------------------------------------


def run_demo(out: Path, *, executor: str = "local", quick: bool = False, max_parallel: int = 2,
             progress: bool = True) -> DemoReport:
    """Run (or continue) the whole demo into `out`; see the module docstring."""
    from rotsweep.analysis import figures
    from rotsweep.analysis.gather import gather

    if executor not in launch.EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose local or slurm")
    if max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {max_parallel}")
    start = time.perf_counter()
    out = Path(out)
    store.check_output_dir(out)
    say = print if progress else (lambda *args: None)

    sweeps = demo_sweeps(out, quick)
    try:
        walks = run_random_walks(out, quick, say, workers=max_parallel)
        submitted = launch_and_wait(sweeps, executor, max_parallel, progress)
    except KeyboardInterrupt:
        stop_after_interrupt(out, [sweep.path for sweep in sweeps], executor, quick)
        raise

    say("gathering and drawing the figures ...")
    drawn = {"randomwalk": figures.plot_all(walks_dir(out, quick))}
    lines = {}
    for sweep in sweeps:
        gather(sweep.path)
        drawn[sweep.experiment] = figures.plot_all(sweep.path)
        lines[sweep.experiment] = f"{best_line(sweep.path)}; {equilibrium_line(sweep.path)}"
    found = measure_findings(walks, {sweep.experiment: sweep.path for sweep in sweeps})

    pngs = {section: [path for paths in d.paths.values() for path in paths if path.suffix == ".png"]
            for section, d in drawn.items()}
    wall_s = time.perf_counter() - start
    report = write_report(out, wall_s=wall_s, quick=quick, findings=found, figures=pngs, sections=lines,
                          executor=executor)
    findings_file = out / "findings.json"
    store.write_json(findings_file, _clean({
        "quick": quick, "wall_s": wall_s,
        "findings": {f.key: {"experiment": f.experiment, "paper": f.paper, "measured": f.line,
                             "verdict": f.verdict, "effect": f.effect.numbers(), "numbers": f.numbers}
                     for f in found},
    }))
    say(f"report: {report}\nfindings: {findings_file}\n"
        + "\n".join(f"  {f.verdict:28s} {f.key}: {f.line}" for f in found))
    print(f"demo wall time: {wall_s:.0f} s ({wall_s / 60:.1f} min)")
    return DemoReport(out, wall_s, report, findings_file, found, submitted, pngs,
                      {section: d.skipped for section, d in drawn.items()})
