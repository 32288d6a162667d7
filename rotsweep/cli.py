"""The `rotsweep` command line: parses arguments and delegates.

Heavy modules (torch, pandas, seaborn) are imported inside each command so
that `rotsweep --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
import typer.core

from rotsweep.analysis.catalog import CATALOG
from rotsweep.errors import UserError

app = typer.Typer(
    help="Sweeps, dynamics and figures for 'Rotational Equilibrium' (Kosson et al., ICML 2024).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    # Plain help: flags show as flags (rich help gives every option a type, `--dry-run <bool>`).
    rich_markup_mode=None,
)


# Choices as enums, so that help lists them and a typo is refused before anything runs.
# They are spelled out here (importing their modules would slow down `--help`);
# tests/test_bad_input.py checks them against the libraries' lists.
class Executor(str, Enum):
    slurm = "slurm"
    local = "local"


class Scale(str, Enum):
    paper = "paper"
    tiny = "tiny"


class Optimizer(str, Enum):
    adamw = "adamw"
    adam_l2 = "adam-l2"
    sgdm = "sgdm"
    lion = "lion"


class Then(str, Enum):
    gather = "gather"
    plot = "plot"
    report = "report"


class KeepCheckpoints(str, Enum):
    all = "all"
    last = "last"
    none = "none"


KEEP_HELP = ("what a finished run keeps of its checkpoint: all, last (the final weights, without the optimizer "
             "state) or none")


class Metric(str, Enum):
    val_top1 = "val_top1"
    val_loss = "val_loss"
    val_perplexity = "val_perplexity"
    train_loss = "train_loss"


def _print_version(value: bool) -> None:
    if value:
        from rotsweep import __version__

        typer.echo(f"rotsweep {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print rotsweep's version and exit"),
) -> None:
    pass


def output_dir(value: str, flag: str = "--out") -> Path:
    """A directory option as a Path; empty is refused (Path("") would silently mean the current directory)."""
    if not value.strip():
        raise UserError(f"{flag} is empty; give a directory (use {flag} . for the current one)")
    return Path(value)


def examples(*lines: str) -> str:
    """A help epilog of example commands (\b keeps click from re-wrapping them)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


JSON_HELP = "print one JSON object instead of text"


def reports_user_errors(command: Callable) -> Callable:
    """Turn a UserError into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


@app.command(epilog=examples(
    "rotsweep predict --optimizer adamw --lr 1e-3 --weight-decay 0.1 --dim 576",
    "rotsweep predict --optimizer sgdm --lr 0.1 --weight-decay 5e-4 --grad-norm 1.3 --json",
))
@reports_user_errors
def predict(
    optimizer: Optimizer = typer.Option(..., help="the optimizer of Table 1"),
    lr: float = typer.Option(..., help="learning rate η"),
    weight_decay: float = typer.Option(..., help="weight decay / ℓ2 coefficient λ"),
    dim: Optional[int] = typer.Option(None, min=1, help="C, the fan-in of one neuron (needed for η̂_g and the norm)"),
    beta1: float = typer.Option(0.9, help="Adam/Lion β1"),
    beta2: Optional[float] = typer.Option(None, help="Adam/Lion β2 (default: 0.999 for Adam, 0.99 for Lion)"),
    momentum: float = typer.Option(0.9, help="SGDM momentum α"),
    grad_norm: Optional[float] = typer.Option(
        None, help="RMS gradient norm of a unit-norm weight vector, sqrt(E‖g̃‖²) (SGDM norm, Adam+ℓ2)"
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Table 1 predictions: RMS update η̂_g, equilibrium rotation η̂_r, equilibrium norm."""
    import math

    from rotsweep import theory

    result = theory.predict_cli(
        optimizer.value, lr=lr, weight_decay=weight_decay, dim=dim, beta1=beta1, beta2=beta2,
        momentum=momentum, grad_norm=grad_norm,
    )
    if "warning" in result and not as_json:  # --json keeps it in the object
        typer.echo(f"warning: {result.pop('warning')}", err=True)
    if result["eta_r"] > math.pi:
        # Table 1 is derived for small angles per step (sin x ≈ x); an angle above π is not one.
        typer.echo(f"warning: η̂_r = {result['eta_r']:.4g} rad per step is above π: Table 1's small-angle "
                   "regime does not hold, the prediction means nothing here", err=True)
    if as_json:
        print_json(result)
    else:
        for key, value in result.items():
            typer.echo(f"{key:>8}  {value:.6g}" if isinstance(value, float) else f"{key:>8}  {value}")


@app.command(epilog=examples("rotsweep randomwalk --optimizer sgdm", "rotsweep randomwalk --optimizer adamw --rotational",
                             "rotsweep plot randomwalk"))
@reports_user_errors
def randomwalk(
    optimizer: Optimizer = typer.Option(Optimizer.adamw, help="the optimizer to simulate"),
    steps: Optional[int] = typer.Option(
        None, help="optimizer steps (default: enough to reach equilibrium: 15000, 40000 for adam-l2)"
    ),
    rotational: bool = typer.Option(False, "--rotational", help="use the rotational variant (Algorithm 1)"),
    out: Optional[str] = typer.Option(
        None, metavar="DIR",
        help="output directory (default: sweeps/randomwalk/OPTIMIZER[-rv], where `plot randomwalk` looks)",
    ),
    seed: int = typer.Option(0, help="seed of the initial weights, gains, inputs and gradients"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The Appendix F random walk: measured equilibrium against Table 1 (Figure 9)."""
    from rotsweep import randomwalk as rw

    name = optimizer.value + ("-rv" if rotational else "")
    directory = Path("sweeps") / "randomwalk" / name if out is None else output_dir(out)
    result = rw.run(optimizer.value, steps=steps, rotational=rotational, out=directory, seed=seed)
    if as_json:
        print_json(result)
    else:
        typer.echo(rw.format_report(result))


@app.command()
@reports_user_errors
def train(
    out: str = typer.Option(..., metavar="DIR", help="run directory (resumed if it holds a checkpoint)"),
    preset: Optional[str] = typer.Option(None, help="a named preset (see `rotsweep presets`)"),
    config: Optional[Path] = typer.Option(None, help="a config.json to run"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a field: key=value (repeatable)"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    data_dir: Optional[Path] = typer.Option(None, help="data sets root (default: $ROTSWEEP_DATA_DIR)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    procs: int = typer.Option(1, "--procs", help="processes (DDP ranks, gloo on CPU) sharing the run; "
                                                 "they split its accumulation, so it must divide it"),
) -> None:
    """Run one training run into OUT: config.json, status.json, metrics and dynamics Parquet, checkpoint."""
    from rotsweep import distributed, presets, store, train as training, usercode
    from rotsweep.config import RunConfig

    usercode.add_to_sys_path(usercode.launch_dirs())  # a model/dataset = "module:function" in this directory

    directory = output_dir(out)
    if (preset is None) == (config is None):
        raise UserError("give exactly one of --preset NAME or --config FILE")
    run_config = presets.preset(preset) if preset else RunConfig.load(config)
    run_config = run_config.with_overrides(set_)
    if procs < 1:
        raise UserError(f"--procs must be at least 1, not {procs}")
    if run_config.accumulation % procs:
        raise UserError(
            f"--procs {procs} does not divide accumulation {run_config.accumulation}: the processes share out "
            f"each step's micro-batches; use --set accumulation={run_config.accumulation * procs} (or another "
            f"multiple of {procs}) or a --procs that divides {run_config.accumulation}"
        )
    if procs == 1:
        status = training.run(run_config, directory, device=device, data_dir=data_dir, progress=progress)
    else:
        store.prepare_run_dir(run_config, directory)  # a refused directory is one line here, not in every rank
        try:
            distributed.spawn(procs, training.run, run_config, str(directory), device=device,
                              data_dir=None if data_dir is None else str(data_dir), progress=progress)
        except distributed.ProcessFailed as error:
            typer.echo(f"{error}; see {directory / store.LOG_FILE}", err=True)
        status = store.read_status(directory)["status"]
    summary = store.read_status(directory)
    typer.echo(f"run {run_config.run_id}: {status} at step {summary.get('step')} in {summary.get('wall_s')} s "
               f"-> {directory}")
    if status != "done":
        raise typer.Exit(1)


@app.command("presets")
def list_presets(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the named run presets (paper recipes and tiny CPU versions)."""
    from rotsweep import presets

    if as_json:
        print_json({name: presets.preset(name).to_dict() for name in presets.PRESETS})
        return
    for name in presets.PRESETS:
        cfg = presets.preset(name)
        length = f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs:g} epochs"
        typer.echo(f"{name:28s} {cfg.model:8s} {cfg.dataset:17s} {cfg.optimizer:6s} lr {cfg.lr:<8g} wd {cfg.weight_decay:<8g} {length}")


@app.command()
@reports_user_errors
def models(
    tiny: bool = typer.Option(False, "--tiny", help="the tiny CPU variants"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the models with their parameter counts."""
    from rotsweep.models import describe_models

    described = describe_models(tiny=tiny)
    if as_json:
        print_json(described)
        return
    for entry in described:
        typer.echo(f"{entry['name']:12s} {entry['params']:>12,d}  {entry['task']:5s}  {entry['description']}")


@app.command("prepare-text")
@reports_user_errors
def prepare_text(
    inputs: list[Path] = typer.Argument(..., help="training text files (or directories of .txt files)"),
    out: str = typer.Option(..., metavar="DIR", help="directory for train.bin / val.bin (/ test.bin)"),
    val_file: list[Path] = typer.Option([], "--val-file", help="text files for val.bin (default: the tail of the inputs)"),
    test_file: list[Path] = typer.Option([], "--test-file", help="text files for test.bin"),
    val_fraction: float = typer.Option(0.0005, help="share of tokens held out for val.bin when no --val-file"),
    encoding: str = typer.Option("gpt2", help="tiktoken encoding"),
) -> None:
    """Tokenize text files with GPT-2 BPE into nanoGPT's uint16 train.bin / val.bin."""
    from rotsweep.data.tokens import prepare_text as prepare

    directory = output_dir(out)
    counts = prepare(inputs, directory, val_fraction=val_fraction, val_files=val_file, test_files=test_file,
                     encoding=encoding)
    for split, tokens in counts.items():
        typer.echo(f"{directory / (split + '.bin')}: {tokens:,} tokens")


@app.command()
@reports_user_errors
def experiments(
    name: Optional[str] = typer.Argument(None, help="one experiment (with --toml)"),
    model: Optional[str] = typer.Option(None, help="with --toml: the model (default: the experiment's first)"),
    toml: bool = typer.Option(False, "--toml", help="print experiment NAME as a sweep file to copy and change"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the experiments with the models they accept, their axes and run counts."""
    from rotsweep.experiments import describe_experiments, get_experiment

    if toml or name is not None:
        from rotsweep import sweepfile

        if not (toml and name):
            raise UserError("give an experiment and --toml, e.g. `rotsweep experiments eta-lambda --toml`")
        experiment = get_experiment(name)
        typer.echo(sweepfile.to_toml(experiment, model or experiment.models[0]), nl=False)
        return
    described = describe_experiments()
    if as_json:
        print_json(described)
        return
    for entry in described:
        figures = entry["figures"] if entry["figures"][0].isalpha() else f"Figure {entry['figures']}"
        typer.echo(f"{entry['name']}  ({figures}): {entry['description']}")
        for model, scales in entry["per_model"].items():
            counts = ", ".join(f"{scale} {info['runs']} runs" for scale, info in scales.items())
            axes = ", ".join(scales["paper"]["axes"]) if "paper" in scales else ""
            typer.echo(f"    --model {model:12s} {counts}; swept: {axes}")


@app.command(epilog=examples(
    "rotsweep launch eta-lambda --model resnet20 --scale tiny --executor local --dry-run",
    "rotsweep launch eta-lambda --model resnet20 --scale tiny --executor local --max-parallel 2",
    "rotsweep launch warmup --model gpt2 --profile a100 --seeds 0 --seeds 1",
    "rotsweep launch adam-vs-adamw --model resnet18 --set eval_interval=200 --rerun-failed",
    "rotsweep launch eta-lambda --model resnet20 --scale tiny --executor local --then plot",
))
@reports_user_errors
def launch(
    experiment: str = typer.Argument(
        ..., help="a built-in experiment (`rotsweep experiments`), a sweep file PATH.toml, or a sweep directory to relaunch"
    ),
    model: Optional[str] = typer.Option(None, help="a model the experiment accepts (built-in experiments only)"),
    scale: Optional[Scale] = typer.Option(
        None, help="paper (A100 recipes) or tiny (CPU minutes); default: paper, or the sweep file's own"
    ),
    executor: Executor = typer.Option(Executor.slurm, help="a SLURM cluster, or this machine"),
    profile: Optional[str] = typer.Option(
        None, help="cluster profile: NAME of slurm/NAME.toml or a .toml path (default: a100 at paper scale, local at tiny)"
    ),
    out: Optional[str] = typer.Option(None, metavar="DIR", help="sweep directory (default: sweeps/EXPERIMENT-MODEL-SCALE)"),
    seeds: Optional[list[int]] = typer.Option(None, "--seeds", metavar="SEED", help="seeds (repeatable; default: the paper's)"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a RunConfig field in every run (repeatable)"),
    grid: list[str] = typer.Option(
        [], "--grid", metavar="FIELD=VALUES",
        help="add or replace an axis: FIELD=V1,V2,... or FIELD=logspace:START:STOP:COUNT (or linspace)",
    ),
    max_parallel: Optional[int] = typer.Option(None, min=1, help="runs at once (SLURM array throttle %N; local pool size)"),
    runs_per_job: int = typer.Option(1, min=1, help="pack several runs into one job"),
    rerun_failed: bool = typer.Option(False, "--rerun-failed", help="also resubmit runs that raised an error"),
    data_dir: Optional[Path] = typer.Option(None, help="data sets root on the nodes (default: $ROTSWEEP_DATA_DIR)"),
    gpus_per_run: Optional[int] = typer.Option(
        None, help="processes (DDP ranks) per run, one GPU each on a GPU profile (default: the profile's, else 1)"),
    nodes_per_run: Optional[int] = typer.Option(None, help="nodes per run (default: the profile's, else 1)"),
    keep_checkpoints: KeepCheckpoints = typer.Option(KeepCheckpoints.last, help=KEEP_HELP),
    then: Optional[Then] = typer.Option(
        None, help="once every job of the sweep has ended: gather, plot (gather + plot all) or report (gather + "
                   "report); a 1-CPU job held by --dependency=afterany on SLURM, a detached process locally; "
                   "a relaunch replaces it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan; submit nothing"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Launch an experiment's sweep or a sweep file; relaunching submits only what is not done."""
    from rotsweep import launch as launcher

    plan = _plan_launch(experiment, model, _value(scale), None if out is None else output_dir(out), seeds or None,
                        set_, rerun_failed, _grid_axes(grid))
    if dry_run:
        report = launcher.dry_run(plan, executor=executor.value, profile_name=profile, max_parallel=max_parallel,
                                  runs_per_job=runs_per_job, gpus_per_run=gpus_per_run, nodes_per_run=nodes_per_run,
                                  then=_value(then))
        if as_json:
            print_json(report.to_dict())
        else:
            typer.echo(report.format())
        return
    submission = launcher.submit(
        plan, executor=executor.value, profile_name=profile, max_parallel=max_parallel, runs_per_job=runs_per_job,
        data_dir=str(data_dir) if data_dir else None, gpus_per_run=gpus_per_run, nodes_per_run=nodes_per_run,
        keep_checkpoints=keep_checkpoints.value, then=_value(then),
    )
    summary = {
        "sweep": str(plan.sweep), "submitted_runs": submission.runs, "jobs": submission.jobs,
        "job_ids": submission.job_ids, "already_done": len(plan.already_done), "total_runs": len(plan.runs),
        "problems": plan.problems, "then": submission.then,
    }
    if as_json:
        print_json(summary)
    else:
        typer.echo(
            f"{plan.sweep}: submitted {submission.runs} of {len(plan.runs)} runs in {submission.jobs} "
            f"{executor.value} job(s); {len(plan.already_done)} already finished. "
            f"Follow with: rotsweep status {plan.sweep}"
        )
        if submission.then:
            typer.echo(f"then: {submission.then['steps']} runs as {submission.then['executor']} job "
                       f"{submission.then['job_id']} once every job of the sweep has ended")
        for problem in plan.problems:
            typer.echo(f"problem: {problem}")


def _grid_axes(items: list[str]) -> dict:
    """--grid lr=0.1,0.2 / lr=logspace:1e-4:1:9 as sweep-file axes: {"lr": [0.1, 0.2]}, {"lr": {"logspace": [...]}}."""
    from rotsweep.config import parse_assignments

    axes = {}
    for item in items:
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not name or not raw:
            raise UserError(f"malformed --grid {item!r}: write FIELD=V1,V2,... or FIELD=logspace:START:STOP:COUNT, "
                            "e.g. --grid lr=1e-3,1e-2")
        kind, colon, bounds = raw.partition(":")
        if colon and kind in ("logspace", "linspace"):
            values = [parse_assignments([f"x={part}"])["x"] for part in bounds.split(":")]
            axes[name] = {kind: values}
        else:
            axes[name] = [parse_assignments([f"x={part.strip()}"])["x"] for part in raw.split(",")]
    return axes


def _plan_launch(target: str, model, scale, out, seeds, overrides, rerun_failed, axes):
    """A built-in experiment by name, a sweep file (.toml), or an existing sweep directory (relaunched)."""
    from rotsweep import launch as launcher, store, sweepfile, usercode

    path = Path(target)
    if target.endswith(".toml") or path.is_file():
        if model is not None:
            raise UserError(f"--model does not apply to a sweep file: set model in the [base] of {target}")
        usercode.add_to_sys_path(usercode.launch_dirs(path))  # a model/dataset = "module:function" of the user's
        return launcher.make_file_plan(sweepfile.load(path), scale=scale, out=out, seeds=seeds, overrides=overrides,
                                       rerun_failed=rerun_failed, axes=axes)
    if (path / store.MANIFEST_FILE).is_file():
        if model is not None or scale is not None or out is not None or axes:
            raise UserError(f"{target} is a sweep directory: relaunch it without --model, --scale, --out or --grid "
                            "(they are recorded in it)")
        return launcher.make_relaunch_plan(path, seeds=seeds, overrides=overrides, rerun_failed=rerun_failed)
    usercode.add_to_sys_path(usercode.launch_dirs())  # `--set model=module:function`
    if model is None:
        from rotsweep.experiments import get_experiment

        models = ", ".join(get_experiment(target).models)
        raise UserError(f"--model is required for the built-in experiment {target}; choose one of: {models}")
    return launcher.make_plan(target, model, scale=scale or "paper", out=out, seeds=seeds, overrides=overrides,
                              rerun_failed=rerun_failed, axes=axes)


@app.command(epilog=examples(
    "rotsweep status sweeps/eta-lambda-resnet20-tiny",
    "rotsweep status sweeps/eta-lambda-resnet20-tiny --state failed,running --sort metric",
    "rotsweep status sweeps/eta-lambda-resnet20-tiny --all --sort eta",
    "rotsweep status sweeps/eta-lambda-resnet20-tiny --watch --interval 10",
    "rotsweep status sweeps/eta-lambda-resnet20-tiny --json",
))
@reports_user_errors
def status(
    sweep: Path = typer.Argument(..., help="sweep directory"),
    state: Optional[str] = typer.Option(
        None, "--state", metavar="STATE,...", help="list only runs in these states (comma-separated): "
        "failed, unreadable, diverged, cancelled, preempted, running, queued, pending, done"),
    sort: str = typer.Option("run", help="order of the runs: run (the sweep's), state, variant, metric (best first), "
                                         "progress, eta"),
    all_runs: bool = typer.Option(False, "--all", help="list every run (default above 40 runs: counts per variant "
                                                        "and the runs that need attention)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    watch: bool = typer.Option(False, "--watch", help="refresh until every run has stopped"),
    interval: float = typer.Option(5.0, min=0.1, help="seconds between refreshes with --watch"),
) -> None:
    """Per run: variant and swept values, state, step/total, last metric, elapsed and ETA; counts and the best run."""
    from rotsweep import launch as launcher

    states = [item.strip() for item in state.split(",") if item.strip()] if state else None
    if watch:
        launcher.watch_status(sweep, interval, states, sort, all_runs)
        return
    report = launcher.sweep_status(sweep, states, sort)
    if as_json:
        print_json(report.to_dict())
    else:
        typer.echo(report.format(all_runs))


@app.command()
@reports_user_errors
def cancel(sweep: Path = typer.Argument(..., help="sweep directory")) -> None:
    """Cancel every job of a sweep that may still run."""
    from rotsweep import launch as launcher

    cancelled = launcher.cancel(sweep)
    typer.echo(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled) or '-'}")


@app.command(epilog=examples(
    "rotsweep clean sweeps/eta-lambda-resnet20-tiny --dry-run",
    "rotsweep clean sweeps/eta-lambda-resnet20-tiny --keep-checkpoints none",
))
@reports_user_errors
def clean(
    sweep: Path = typer.Argument(..., help="sweep directory"),
    keep_checkpoints: KeepCheckpoints = typer.Option(KeepCheckpoints.last, help=KEEP_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="report what would be freed; delete nothing"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Free the checkpoints of finished runs; running and unfinished runs are never touched."""
    from rotsweep.clean import clean as clean_sweep

    report = clean_sweep(sweep, keep_checkpoints.value, dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
    else:
        typer.echo(report.format())


@app.command()
@reports_user_errors
def logs(
    sweep: Path = typer.Argument(..., help="sweep directory"),
    run_id: str = typer.Argument(..., help="a run id from `rotsweep status`"),
    lines: int = typer.Option(40, min=1, help="last lines of each log"),
) -> None:
    """Show the paths and last lines of a run's log and of its job's stdout/stderr."""
    from rotsweep import launch as launcher

    for label, path in launcher.log_paths(sweep, run_id).items():
        typer.echo(f"== {label}: {path}")
        if path.exists():
            typer.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        else:
            typer.echo("(not written yet)")


@app.command(epilog=examples(
    "rotsweep gather sweeps/eta-lambda-resnet20-tiny",
    "rotsweep gather sweeps/eta-lambda-resnet20-tiny --full --json",
))
@reports_user_errors
def gather(
    sweep: Path = typer.Argument(..., help="sweep directory"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    full: bool = typer.Option(False, "--full", help="ignore the cache and read every run again"),
) -> None:
    """Read the sweep's run directories (only those that changed) into SWEEP/results/*.parquet."""
    from rotsweep.analysis.gather import gather as gather_sweep

    report = gather_sweep(sweep, full=full)
    if as_json:
        print_json(report.to_dict())
    else:
        typer.echo(report.format())


class TableFormat(str, Enum):
    md = "md"
    latex = "latex"
    csv = "csv"
    json = "json"


@app.command(epilog=examples(
    "rotsweep table sweeps/zero-shot-resnet20-tiny",
    "rotsweep table sweeps/eta-lambda-resnet20-tiny --by lr --metric val_loss --format latex",
))
@reports_user_errors
def table(
    sweep: Path = typer.Argument(..., help="a gathered sweep directory"),
    by: list[str] = typer.Option([], "--by", metavar="FIELD",
                                 help="RunConfig fields of the rows beside the variant (repeatable; default: lr and "
                                      "weight_decay where they vary; zero-shot sweeps: the layout of Tables 2 and 3)"),
    metric: Optional[Metric] = typer.Option(None, help="the metric (default: accuracy, else validation loss)"),
    format_: TableFormat = typer.Option(TableFormat.md, "--format", help="output format"),
) -> None:
    """Mean ± std over seeds of the final and best metric per variant and setting, the best marked."""
    from rotsweep.analysis.table import format_table

    typer.echo(format_table(sweep, by or None, _value(metric), format_.value))


class ExportFormat(str, Enum):
    tensorboard = "tensorboard"
    wandb = "wandb"
    csv = "csv"


@app.command(epilog=examples(
    "rotsweep export sweeps/eta-lambda-resnet20-tiny --to tensorboard   # then: tensorboard --logdir SWEEP/export/tensorboard",
    "rotsweep export sweeps/eta-lambda-resnet20-tiny --to wandb   # then: wandb sync SWEEP/export/wandb/wandb/offline-run-*",
    "rotsweep export sweeps/eta-lambda-resnet20-tiny --to csv --out tables",
))
@reports_user_errors
def export(
    sweep: Path = typer.Argument(..., help="a gathered sweep directory"),
    to: ExportFormat = typer.Option(..., "--to", help="TensorBoard event files, W&B offline runs or CSV tables"),
    out: Optional[str] = typer.Option(None, metavar="DIR", help="directory to write (default: SWEEP/export/<format>); "
                                                 "a previous export there is replaced"),
) -> None:
    """Export the gathered tables to TensorBoard, W&B (offline, `wandb sync` later) or CSV."""
    _figures()  # matplotlib on Agg before the export's variant labels import it
    from rotsweep.analysis.export import export as export_sweep

    typer.echo(export_sweep(sweep, to.value, None if out is None else output_dir(out)).format())


plot_app = typer.Typer(
    help="Draw the paper's figures into SWEEP/figures/ (PNG and PDF, or --format), from the tables of `rotsweep gather`.",
    no_args_is_help=True, rich_markup_mode=None,
    epilog=examples(
        "rotsweep gather sweeps/adam-vs-adamw-resnet18-tiny",
        "rotsweep plot all sweeps/adam-vs-adamw-resnet18-tiny",
        "rotsweep plot heatmap sweeps/adam-vs-adamw-resnet18-tiny --metric val_loss",
        "rotsweep plot heatmap sweeps/eta-lambda-tiny-resnet20-tiny --x lr --y weight_decay",
        "rotsweep plot lr-sweep sweeps/warmup-gpt2-tiny --by optimizer --by warmup_steps",
        "rotsweep plot dynamics sweeps/dynamics-gpt2-tiny --run RUN_ID",
        "rotsweep plot randomwalk sweeps/randomwalk",
    ),
)
app.add_typer(plot_app, name="plot")
METRIC_HELP = "the final metric to show (default: accuracy, else validation loss)"
SWEEP_HELP = "sweep directory (default: the newest sweep in sweeps/ with the data)"


FORMAT_HELP = "figure files to write, comma-separated: png, pdf, svg"
X_HELP = "the x axis: a RunConfig field or runs.parquet column (default: lr, else the sweep's first numeric axis)"
Y_HELP = "the y axis (default: weight_decay, else the sweep's second numeric axis)"
BY_HELP = ("group runs by these fields instead of by variant (repeatable, e.g. --by optimizer --by warmup_steps); "
           "each group shows its best setting")
DPI_HELP = "resolution of the PNG files in dots per inch"


def _figure_help(name: str, option: str = "") -> str:
    """A plot command's help, from the figure catalog: what it draws, and which sweeps have its data."""
    entry = CATALOG[name]
    return f"{entry.draws}{option}. Data: {entry.applies_to}."


def _figures():
    """rotsweep.analysis.figures with matplotlib on Agg: the CLI only writes files (no display on
    cluster nodes or in CI). The library itself leaves the backend alone (notebooks)."""
    import matplotlib

    matplotlib.use("Agg")
    from rotsweep.analysis import figures

    return figures


def _files(formats: str, dpi: int):
    """--format and --dpi as the FigureFiles of rotsweep.analysis.figures."""
    return _figures().FigureFiles(tuple(kind.strip().lower() for kind in formats.split(",") if kind.strip()), dpi)


def _sweep_for(figure: str, sweep: Optional[Path]) -> Path:
    return sweep if sweep is not None else _figures().find_sweep(figure)


def _value(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else choice.value


def _echo_paths(paths, sweep: Optional[Path] = None) -> None:
    """The figures drawn, then (on stderr) what the gathered tables they come from lack."""
    typer.echo("\n".join(str(path) for path in paths))
    if sweep is not None:
        _note_gather_problems(sweep)


def _note_gather_problems(sweep: Path) -> None:
    from rotsweep.analysis.gather import recorded_problems

    problems = recorded_problems(sweep)
    if problems:
        runs = len({problem.run_id for problem in problems})
        typer.echo(f"note: gather skipped {len(problems)} file(s) of {runs} run(s), which the figures lack "
                   f"(a run without a readable status is marked '?'); `rotsweep gather {sweep}` lists them",
                   err=True)


@plot_app.command("heatmap", help=_figure_help("heatmap", " (or over --x, --y)"))
@reports_user_errors
def plot_heatmap(
    sweep: Optional[Path] = typer.Argument(None, help=SWEEP_HELP),
    metric: Optional[Metric] = typer.Option(None, help=METRIC_HELP),
    x: Optional[str] = typer.Option(None, "--x", metavar="FIELD", help=X_HELP),
    y: Optional[str] = typer.Option(None, "--y", metavar="FIELD", help=Y_HELP),
    by: list[str] = typer.Option([], "--by", metavar="FIELD", help=BY_HELP),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    chosen = _sweep_for("heatmap", sweep)
    _echo_paths(_figures().plot_heatmap(chosen, _value(metric), _files(format_, dpi), x, y, by or None), chosen)


@plot_app.command("lr-sweep", help=_figure_help("lr-sweep", " (or against --x, one per --by group)"))
@reports_user_errors
def plot_lr_sweep(
    sweep: Optional[Path] = typer.Argument(None, help=SWEEP_HELP),
    metric: Optional[Metric] = typer.Option(None, help=METRIC_HELP),
    x: Optional[str] = typer.Option(None, "--x", metavar="FIELD", help=X_HELP),
    by: list[str] = typer.Option([], "--by", metavar="FIELD", help=BY_HELP),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    chosen = _sweep_for("lr-sweep", sweep)
    _echo_paths(_figures().plot_lr_sweep(chosen, _value(metric), _files(format_, dpi), x, by or None), chosen)


@plot_app.command("curves", help=_figure_help("curves"))
@reports_user_errors
def plot_curves(
    sweep: Optional[Path] = typer.Argument(None, help=SWEEP_HELP),
    run: list[str] = typer.Option([], "--run", help="run ids (repeatable; default: the best run per variant)"),
    metric: Optional[Metric] = typer.Option(None, help=METRIC_HELP),
    by: list[str] = typer.Option([], "--by", metavar="FIELD", help=BY_HELP),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    chosen = _sweep_for("curves", sweep)
    _echo_paths(_figures().plot_curves(chosen, run or None, _value(metric), _files(format_, dpi), by or None), chosen)


@plot_app.command("dynamics", help=_figure_help(
    "dynamics", "; with --neurons, " + CATALOG["dynamics-neurons"].draws))
@reports_user_errors
def plot_dynamics(
    sweep: Optional[Path] = typer.Argument(None, help=SWEEP_HELP),
    run: list[str] = typer.Option([], "--run", help="run ids (repeatable; default: the best run per variant)"),
    layer: list[str] = typer.Option([], "--layer", help="weight names (repeatable; default: all)"),
    neurons: bool = typer.Option(False, "--neurons", help="per-neuron rotation of one layer (Figure 7R)"),
    metric: Optional[Metric] = typer.Option(None, help=METRIC_HELP),
    by: list[str] = typer.Option([], "--by", metavar="FIELD", help=BY_HELP),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    chosen = _sweep_for("dynamics", sweep)
    _echo_paths(_figures().plot_dynamics(chosen, run or None, layer or None, neurons,
                                         _value(metric), _files(format_, dpi), by or None), chosen)


@plot_app.command("imbalance", help=_figure_help("imbalance"))
@reports_user_errors
def plot_imbalance(
    sweep: Optional[Path] = typer.Argument(None, help=SWEEP_HELP),
    metric: Optional[Metric] = typer.Option(None, help=METRIC_HELP),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    chosen = _sweep_for("imbalance", sweep)
    _echo_paths(_figures().plot_imbalance(chosen, _value(metric), _files(format_, dpi)), chosen)


@plot_app.command("randomwalk", help=_figure_help("randomwalk"))
@reports_user_errors
def plot_randomwalk(
    directory: Optional[Path] = typer.Argument(None, help="directory of random-walk outputs (default: sweeps/randomwalk)"),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    _echo_paths(_figures().plot_randomwalk(_sweep_for("randomwalk", directory), _files(format_, dpi)))


@plot_app.command("all")
@reports_user_errors
def plot_all(
    sweep: Path = typer.Argument(..., help="a gathered sweep directory, or a random-walk directory"),
    format_: str = typer.Option("png,pdf", "--format", help=FORMAT_HELP),
    dpi: int = typer.Option(150, min=1, help=DPI_HELP),
) -> None:
    """Every figure the sweep's data supports.

    Exit code 0 when at least one figure was drawn, 1 when the sweep has data for
    none of them yet (each skip is explained), 2 for a directory that is not a
    gathered sweep.
    """
    drawn = _figures().plot_all(sweep, _files(format_, dpi))
    typer.echo(drawn.format())
    _note_gather_problems(sweep)
    if not drawn.paths:
        typer.echo(f"error: no figure drawn from {sweep}", err=True)
        raise typer.Exit(1)


@app.command(epilog=examples("rotsweep gather sweeps/eta-lambda-resnet20-tiny",
                             "rotsweep report sweeps/eta-lambda-resnet20-tiny"))
@reports_user_errors
def report(sweep: Path = typer.Argument(..., help="a gathered sweep directory")) -> None:
    """SWEEP/report.html (self-contained: figures embedded) and report.md: grid, results table, Table 1
    predictions, every figure the sweep supports, failures with their logs."""
    _figures()  # the report draws figures: Agg, as for `plot`
    from rotsweep.analysis.report import sweep_report

    markdown, page = sweep_report(sweep)
    typer.echo(f"{page}\n{markdown}")
    _note_gather_problems(sweep)


@app.command()
@reports_user_errors
def demo(
    out: str = typer.Option("demo", metavar="DIR", help="output directory: report.md, findings.json, sweeps/, randomwalk/"),
    executor: Executor = typer.Option(Executor.local, help="this machine, or SLURM with the profile slurm/local.toml"),
    max_parallel: int = typer.Option(2, min=1, help="runs at once"),
    quick: bool = typer.Option(False, "--quick", help="the reduced demo of the tests (short runs, ~1.5 min)"),
) -> None:
    """The paper in miniature: every tiny sweep, the figures and the measured findings in OUT/report.md."""
    from rotsweep.demo import run_demo

    _figures()  # the demo draws figures: Agg, as for `plot`

    try:
        run_demo(output_dir(out), executor=executor.value, quick=quick, max_parallel=max_parallel)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


class OneLineUsageError(typer.BadParameter):
    """A usage error (a typo in a choice, a value out of range, an unknown flag) shown as one
    line, like a UserError, instead of click's usage block."""

    def show(self, file=None) -> None:
        typer.echo(f"error: {self.message}", err=True)


def _is_usage_error(error: Exception) -> bool:
    # click's UsageError (exit code 2), except "no arguments: show the help" (NoArgsIsHelpError).
    return (getattr(error, "exit_code", None) == 2 and hasattr(error, "format_message")
            and type(error).__name__ != "NoArgsIsHelpError")


class OneLineErrors:
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except Exception as error:
            if not _is_usage_error(error):
                raise
            raise OneLineUsageError(f"{error.format_message()} (see `{ctx.command_path} --help`)") from None


class OneLineErrorsCommand(OneLineErrors, typer.core.TyperCommand):
    pass


class OneLineErrorsGroup(OneLineErrors, typer.core.TyperGroup):
    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except Exception as error:
            if not _is_usage_error(error):
                raise
            raise OneLineUsageError(f"{error.format_message()} (see `{ctx.command_path} --help`)") from None


for typer_app in (app, plot_app):
    typer_app.info.cls = OneLineErrorsGroup
    for info in typer_app.registered_commands:
        info.cls = OneLineErrorsCommand


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
