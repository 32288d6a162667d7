"""`rotsweep demo`: the paper in miniature on a laptop CPU, from launch to report.

    report = run_demo(Path("demo"))      # ~10 minutes on 2 cores; DIR/report.md, DIR/findings.json

The demo is the paper's pipeline at tiny scale, through the same code that runs it
at paper scale on SLURM:

1. the random walk of Appendix F (Figure 9) for AdamW, SGDM, Lion, Adam+ℓ2 and
   RV-AdamW, in this process (rotsweep.randomwalk);
2. the tiny sweep of each experiment of EXPERIMENTS, planned and submitted by
   rotsweep.launch exactly as `rotsweep launch EXPERIMENT --scale tiny` does;
3. a progress bar over every run until all have stopped; then gather and every
   figure each sweep supports (rotsweep.analysis);
4. the paper's findings, each measured from the gathered Parquet and set beside
   the paper's claim with a verdict: "shows", or "does not show at tiny scale".
   Nothing is asserted by construction: a verdict is a comparison of measured
   numbers, and a finding that the tiny runs do not reproduce says so;
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
measured on (QUICK_EXPERIMENTS), runs of QUICK_OVERRIDES' length and short random walks. The overrides are part of a sweep's
identity (its manifest), so the quick sweeps live in their own directories
(`-quick` suffix) and a full demo can follow a quick one in the same DIR.
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
# The quick demo: the experiments the findings are measured on, short runs evaluated on a few batches.
QUICK_EXPERIMENTS = [entry for entry in EXPERIMENTS if entry[0] not in ("imbalance", "dynamics")]
QUICK_OVERRIDES = ["steps=60", "eval_batches=4"]
QUICK_WALK_STEPS = 1500
POLL_SECONDS = 2.0
RANDOM_WALK_TOLERANCE = 0.05  # the "within 5% of Table 1"
EARLY_FRACTION = 0.1  # the RV transient: the first 10% of the steps after warmup
SHOWS, DOES_NOT_SHOW = "shows", "does not show at tiny scale"


# --- Where things go -----------------------------------------------------------------------


def sweep_dir(out: Path, experiment: str, model: str, quick: bool) -> Path:
    return out / "sweeps" / (f"{experiment}-{model}-tiny" + ("-quick" if quick else ""))


def walks_dir(out: Path, quick: bool) -> Path:
    return out / ("randomwalk-quick" if quick else "randomwalk")


# --- 1. Random walks -----------------------------------------------------------------------


def run_random_walks(out: Path, quick: bool, say) -> dict[str, dict]:
    """randomwalk.json of every walk of RANDOM_WALKS, running those that have none yet."""
    results = {}
    for name, (optimizer, rotational) in RANDOM_WALKS.items():
        directory = walks_dir(out, quick) / name
        if (directory / "randomwalk.json").is_file():
            results[name] = store.read_json(directory / "randomwalk.json")
            continue
        say(f"random walk {name} ...")
        results[name] = randomwalk.run(optimizer, steps=QUICK_WALK_STEPS if quick else None, rotational=rotational,
                                       out=directory)
    return results


# --- 2-3. Launch and wait ------------------------------------------------------------------


def run_progress(report: dict) -> tuple[int, float]:
    """(runs stopped, steps done counted in runs) of a launch.sweep_status report."""
    stopped, steps = 0, 0.0
    for run in report["runs"]:
        if run["state"] in launch.STOPPED_STATES and run["state"] not in ("pending", "preempted"):
            stopped += 1
            steps += 1.0
        elif run["total_steps"]:
            steps += min(run["step"] / run["total_steps"], 1.0)
    return stopped, steps


def submit_sweep(sweep: Path, experiment: str, model: str, overrides: list[str], executor: str,
                 max_parallel: int) -> int:
    """`rotsweep launch EXPERIMENT --model MODEL --scale tiny --out SWEEP`: the number of runs submitted."""
    plan = launch.make_plan(experiment, model, scale="tiny", out=sweep, overrides=overrides)
    submission = launch.submit(plan, executor=executor, profile_name="local", max_parallel=max_parallel)
    return submission.runs


def launch_and_wait(sweeps: list[tuple[Path, str, str]], overrides: list[str], executor: str,
                    max_parallel: int, show_progress: bool) -> int:
    """Submit the sweeps and wait until every run has stopped; returns the number of runs submitted."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    run_counts = {sweep: len(launch.make_plan(experiment, model, scale="tiny", out=sweep, overrides=overrides).runs)
                  for sweep, experiment, model in sweeps}
    # Sweeps launched by an earlier, interrupted demo count from the start.
    progress = {sweep: run_progress(launch.sweep_status(sweep)) if store.read_manifest(sweep) else (0, 0.0)
                for sweep in run_counts}
    submitted = 0
    # Local: one sweep at a time (see the module docstring); SLURM: everything at once.
    waves = [[entry] for entry in sweeps] if executor == "local" else [sweeps]
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[runs]}"),
                   TimeElapsedColumn(), disable=not show_progress)
    task = bar.add_task("sweeps", total=sum(run_counts.values()), runs="")
    with bar:
        for wave in waves:
            for sweep, experiment, model in wave:
                submitted += submit_sweep(sweep, experiment, model, overrides, executor, max_parallel)
            names = ", ".join(f"{experiment} ({model})" for _, experiment, model in wave)
            while True:
                reports = {sweep: launch.sweep_status(sweep) for sweep, _, _ in wave}  # only what can change
                progress.update({sweep: run_progress(report) for sweep, report in reports.items()})
                bar.update(task, completed=sum(steps for _, steps in progress.values()), description=names,
                           runs=f"{sum(stopped for stopped, _ in progress.values())}/{sum(run_counts.values())} runs")
                if all(launch.all_stopped(report) for report in reports.values()):
                    break
                time.sleep(POLL_SECONDS)
    return submitted


def stop_after_interrupt(out: Path, sweeps: list[Path], executor: str, quick: bool) -> None:
    """On Ctrl-C: stop local jobs (nothing keeps running behind the user's back) and say how to resume."""
    if executor == "local":
        for sweep in sweeps:
            if store.read_manifest(sweep) is not None:
                launch.cancel(sweep)
        what = "Local jobs were stopped; finished runs are kept and stopped ones resume from their checkpoints."
    else:
        what = "The SLURM jobs keep running (`rotsweep cancel SWEEP` stops them); finished runs are kept."
    print(f"\ninterrupted. {what}\nTo continue where it stopped, run the same command again: "
          f"rotsweep demo --out {out} --executor {executor}" + (" --quick" if quick else ""))


# --- 4. Findings, measured -----------------------------------------------------------------


@dataclass
class Finding:
    """One of the paper's findings: its claim, what this run measured, and the verdict."""

    key: str
    experiment: str  # the report section it belongs to ("randomwalk" or an experiment)
    paper: str
    measured: str  # one line with the numbers
    verdict: str  # SHOWS or DOES_NOT_SHOW
    numbers: dict = field(default_factory=dict)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(value)


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


def verdict(shows: bool) -> str:
    return SHOWS if shows else DOES_NOT_SHOW


def finding_randomwalk(walks: dict[str, dict]) -> Finding:
    """Measured equilibrium rotation and norm against Table 1, per optimizer (Figure 9)."""
    ratios = {}
    for name, result in walks.items():
        ratios[name] = {key: result[f"{key}_measured"] / result[f"{key}_predicted"] for key in ("eta_r", "norm")}
        ratios[name]["steps"] = result["steps"]
    within = {name: all(abs(r[key] - 1) <= RANDOM_WALK_TOLERANCE for key in ("eta_r", "norm"))
              for name, r in ratios.items()}
    measured = "; ".join(f"{name} η_r {r['eta_r']:.3f}×, norm {r['norm']:.3f}×" for name, r in ratios.items())
    return Finding(
        "randomwalk", "randomwalk",
        "the random walk's equilibrium rotation η_r and norm match Table 1 within 5% for every optimizer",
        f"measured / Table 1: {measured}", verdict(all(within.values())),
        {"ratios": ratios, "within_5_percent": within, "tolerance": RANDOM_WALK_TOLERANCE},
    )


def _done(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "done"]


def _best(runs: pd.DataFrame, metric: str, higher: bool) -> pd.Series | None:
    """The finished run with the best final metric, None if no finished run has one."""
    finished = _done(runs)
    finished = finished[np.isfinite(finished[metric].astype(float))]
    if finished.empty:
        return None
    return finished.loc[finished[metric].idxmax() if higher else finished[metric].idxmin()]


def finding_layer_spread(sweep: Path) -> Finding:
    """Figure 6 right: per-layer rotation of the best AdamW and Adam+ℓ2 runs."""
    from rotsweep.analysis.gather import read_results

    runs, layers = read_results(sweep, "runs"), read_results(sweep, "layers")
    numbers = {}
    for optimizer in ("adamw", "adam-l2"):
        best = _best(runs[runs["optimizer"] == optimizer], "final_val_top1", higher=True)
        if best is None:
            continue
        rotation = layers.loc[(layers["run_id"] == best["run_id"]) & (layers["eta_r"] > 0), "eta_r"]
        numbers[optimizer] = {
            "run_id": best["run_id"], "lr": best["lr"], "weight_decay": best["weight_decay"],
            "val_top1": best["final_val_top1"], "imbalance_layers": best["imbalance_layers"],
            "max_over_min_layer_eta_r": rotation.max() / rotation.min() if len(rotation) else math.nan,
        }
    both = len(numbers) == 2 and all(_finite(n["imbalance_layers"]) for n in numbers.values())
    shows = both and (numbers["adam-l2"]["imbalance_layers"] > numbers["adamw"]["imbalance_layers"]
                      and numbers["adam-l2"]["max_over_min_layer_eta_r"] >= 10)
    measured = "; ".join(
        f"{name} (best run, lr {n['lr']:.3g}, λ {n['weight_decay']:.3g}): std of log layer η_r "
        f"{n['imbalance_layers']:.2f}, max/min layer η_r {n['max_over_min_layer_eta_r']:.1f}×"
        for name, n in numbers.items()
    ) or "no finished runs"
    return Finding(
        "layer_spread", "adam-vs-adamw",
        "AdamW rotates all layers alike, Adam+ℓ2's per-layer rotation spreads over an order of magnitude",
        measured, verdict(shows), numbers,
    )


def early_rotation_ratio(run: pd.Series, layers: pd.DataFrame, dynamics: pd.DataFrame) -> float:
    """Geometric mean of measured / predicted rotation over the early window after warmup.

    The window is EARLY_FRACTION of the run's steps from the end of warmup (at least three
    recorded steps); the prediction is η̂_r at each step's scheduled lr; the layers are
    those gather measures (layers.parquet: weights with angular updates).
    """
    from rotsweep.analysis.figures import run_config
    from rotsweep.analysis.gather import predicted_rotation
    from rotsweep.schedule import learning_rate

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
    lrs = np.array([learning_rate(config, int(step), total, warmup) for step in rows["step"]])
    predicted = np.asarray(predicted_rotation(config, lrs), dtype=float)
    return float(np.exp(np.mean(np.log(rows["value"].to_numpy() / predicted))))


def finding_no_transient(sweep: Path) -> Finding:
    """Figure 4 M/R: early rotation against η̂_r, RV-AdamW vs AdamW at the same (η, λ)."""
    from rotsweep.analysis.gather import read_results

    runs, layers = read_results(sweep, "runs"), read_results(sweep, "layers")
    dynamics = read_results(sweep, "dynamics")
    dynamics = dynamics[(dynamics["stat"] == "angular_update") & (dynamics["reduction"] == "mean")]
    per_lr = {}
    for lr, group in _done(runs).groupby("lr"):
        pair = {("rv-adamw" if row["rotational"] else "adamw"): early_rotation_ratio(row, layers, dynamics)
                for _, row in group.iterrows()}
        if len(pair) == 2 and all(_finite(v) for v in pair.values()):
            per_lr[f"{lr:g}"] = pair
    distance = {name: float(np.mean([abs(math.log(pair[name])) for pair in per_lr.values()])) if per_lr else math.nan
                for name in ("adamw", "rv-adamw")}
    shows = bool(per_lr) and distance["rv-adamw"] < distance["adamw"] and distance["rv-adamw"] < math.log(1.25)
    listing = "; ".join(f"lr {lr}: AdamW {p['adamw']:.2f}×, RV {p['rv-adamw']:.2f}×" for lr, p in per_lr.items())
    measured = (f"measured / η̂_r over the first {EARLY_FRACTION:.0%} of steps after warmup: {listing}; "
                f"mean over lr of abs(log ratio): AdamW {distance['adamw']:.2f}, RV-AdamW {distance['rv-adamw']:.2f}"
                if per_lr else "no finished AdamW / RV-AdamW pair with early dynamics")
    return Finding(
        "no_transient", "eta-lambda",
        "the RV has no transient: it rotates at η̂_r from the start, while AdamW only approaches it",
        measured, verdict(shows),
        {"early_ratio_by_lr": per_lr, "mean_abs_log_ratio": distance, "early_fraction": EARLY_FRACTION},
    )


def finding_warmup(sweep: Path) -> Finding:
    """Figure 5: the best final validation loss with and without warmup, per optimizer."""
    from rotsweep.analysis.gather import read_results

    runs = read_results(sweep, "runs")
    runs = runs.assign(name=np.where(runs["rotational"], "rv-adamw", "adamw"),
                       warmed=(runs["warmup_steps"] > 0) | (runs["warmup_epochs"] > 0))
    numbers = {}
    for name, group in runs.groupby("name"):
        best = {warmed: _best(rows, "final_val_loss", higher=False) for warmed, rows in group.groupby("warmed")}
        loss = {warmed: (row["final_val_loss"] if row is not None else math.nan) for warmed, row in best.items()}
        with_warmup, without = loss.get(True, math.nan), loss.get(False, math.nan)
        numbers[name] = {"best_val_loss_warmup": with_warmup, "best_val_loss_no_warmup": without,
                         "loss_increase_without_warmup": without - with_warmup}
    increase = {name: n["loss_increase_without_warmup"] for name, n in numbers.items()}
    shows = (all(_finite(increase.get(name)) for name in ("adamw", "rv-adamw"))
             and increase["adamw"] > increase["rv-adamw"])
    measured = "; ".join(
        f"{name}: best val loss {n['best_val_loss_warmup']:.3f} with warmup, {n['best_val_loss_no_warmup']:.3f} "
        f"without ({n['loss_increase_without_warmup']:+.3f})" for name, n in numbers.items()
    )
    return Finding(
        "warmup", "warmup",
        "removing warmup hurts AdamW more than RV-AdamW (the RV has no transient to keep in check)",
        measured, verdict(shows), numbers,
    )


def finding_weight_standardization(sweep: Path) -> Finding:
    """Figure 7 right: spread of per-neuron rotation, LN baseline vs LN + WS, at each learning rate."""
    from rotsweep.analysis.gather import read_results

    runs = _done(read_results(sweep, "runs"))
    plain = runs[~runs["rotational"]]
    by_lr = {}
    for lr, group in plain.groupby("lr"):
        pair = {("ws" if row["weight_standardization"] else "baseline"): row["imbalance_neurons"]
                for _, row in group.iterrows()}
        if len(pair) == 2 and all(_finite(v) for v in pair.values()):
            by_lr[f"{lr:g}"] = pair
    narrower = [pair["ws"] < pair["baseline"] for pair in by_lr.values()]
    shows = bool(narrower) and all(narrower)
    listing = ", ".join(f"lr {lr}: {p['baseline']:.2f} → {p['ws']:.2f}" for lr, p in by_lr.items())
    measured = (f"std over neurons of log η_r (mean over layers), baseline → +WS: {listing}"
                if by_lr else "no finished baseline / WS pair")
    return Finding(
        "weight_standardization", "weight-std",
        "Weight Standardization narrows the spread of per-neuron rotation (as the RV does by construction)",
        measured, verdict(shows), {"imbalance_neurons_by_lr": by_lr},
    )


def measure_findings(walks: dict[str, dict], sweeps: dict[str, Path]) -> list[Finding]:
    """Every finding of the issue, measured from the random walks and the gathered sweeps."""
    return [
        finding_randomwalk(walks),
        finding_layer_spread(sweeps["adam-vs-adamw"]),
        finding_no_transient(sweeps["eta-lambda"]),
        finding_warmup(sweeps["warmup"]),
        finding_weight_standardization(sweeps["weight-std"]),
    ]


# --- 5. The report -------------------------------------------------------------------------

# What each section shows, from the paper (figure numbers of Kosson et al., ICML 2024).
SECTIONS = {
    "randomwalk": ("Figure 9: the random walk of Appendix F",
                   "A scale-invariant layer driven by pure noise settles at the equilibrium norm and rotation "
                   "of Table 1."),
    "eta-lambda": ("Figures 4 and 14: learning rate at a fixed η·λ",
                   "Along η·λ = const the equilibrium rotation is the same; AdamW's accuracy still depends on η "
                   "through the transient, RV-AdamW's much less."),
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


def equilibrium_line(sweep: Path) -> str:
    """Median over layers of measured / predicted equilibrium rotation, per run variant (any sweep)."""
    from rotsweep.analysis.figures import load_runs
    from rotsweep.analysis.gather import read_results

    runs, layers = load_runs(sweep), read_results(sweep, "layers")
    ratios = layers.merge(runs[["run_id", "variant"]], on="run_id").groupby("variant")["eta_r_ratio"].median()
    ratios = ratios[np.isfinite(ratios)]
    if ratios.empty:
        return "no equilibrium rotation measured"
    return "median over layers of measured / predicted η_r (25-75% of training): " + ", ".join(
        f"{variant} {ratio:.2f}×" for variant, ratio in ratios.items())


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
    """OUT/report.md: per experiment its figures, the paper's finding and this run's numbers."""
    lines = [
        "# Rotational Equilibrium in miniature" + (" (quick demo)" if quick else ""),
        "",
        f"Wall time {wall_s / 60:.1f} min ({wall_s:.0f} s) on the {executor} executor. Every run is a tiny "
        "version of the paper's (small models, synthetic data, hundreds of steps on a CPU); the findings below "
        "are measured from the gathered results, never assumed.",
        "",
        "| finding | paper | this run | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f.key} | {f.paper} | {f.measured} | **{f.verdict}** |" for f in findings]
    for section, (title, paper) in SECTIONS.items():
        if section not in figures:
            continue  # not part of this demo (the quick one leaves some experiments out)
        lines += ["", f"## {title}", "", f"- **Paper:** {paper}"]
        lines += [f"- **This run:** {sections[section]}"] if section in sections else []
        for finding in findings:
            if finding.experiment == section:
                lines.append(f"- **Finding ({finding.verdict}):** {finding.paper}. Measured: {finding.measured}.")
        for path in figures.get(section, []):
            lines += ["", f"![{path.stem}]({path.relative_to(out).as_posix()})"]
    report = out / "report.md"
    store.write_text(report, "\n".join(lines) + "\n")
    return report


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

    sweeps = [(sweep_dir(out, experiment, model, quick), experiment, model)
              for experiment, model in (QUICK_EXPERIMENTS if quick else EXPERIMENTS)]
    try:
        walks = run_random_walks(out, quick, say)
        submitted = launch_and_wait(sweeps, QUICK_OVERRIDES if quick else [], executor, max_parallel, progress)
    except KeyboardInterrupt:
        stop_after_interrupt(out, [sweep for sweep, _, _ in sweeps], executor, quick)
        raise

    say("gathering and drawing the figures ...")
    drawn = {"randomwalk": figures.plot_all(walks_dir(out, quick))}
    lines = {}
    for sweep, experiment, _ in sweeps:
        gather(sweep)
        drawn[experiment] = figures.plot_all(sweep)
        lines[experiment] = f"{best_line(sweep)}; {equilibrium_line(sweep)}"
    found = measure_findings(walks, {experiment: sweep for sweep, experiment, _ in sweeps})

    pngs = {section: [path for paths in d.paths.values() for path in paths if path.suffix == ".png"]
            for section, d in drawn.items()}
    wall_s = time.perf_counter() - start
    report = write_report(out, wall_s=wall_s, quick=quick, findings=found, figures=pngs, sections=lines,
                          executor=executor)
    findings_file = out / "findings.json"
    store.write_json(findings_file, _clean({
        "quick": quick, "wall_s": wall_s,
        "findings": {f.key: {"experiment": f.experiment, "paper": f.paper, "measured": f.measured,
                             "verdict": f.verdict, "numbers": f.numbers} for f in found},
    }))
    say(f"report: {report}\nfindings: {findings_file}\n"
        + "\n".join(f"  {f.verdict:28s} {f.key}: {f.measured}" for f in found))
    print(f"demo wall time: {wall_s:.0f} s ({wall_s / 60:.1f} min)")
    return DemoReport(out, wall_s, report, findings_file, found, submitted, pngs,
                      {section: d.skipped for section, d in drawn.items()})
