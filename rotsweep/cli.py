"""The `rotsweep` command line: parses arguments and delegates.

Heavy modules (torch, pandas, seaborn) are imported inside each command so
that `rotsweep --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from rotsweep.errors import UserError

app = typer.Typer(
    help="Sweeps, dynamics and figures for 'Rotational Equilibrium' (Kosson et al., ICML 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


@app.command()
@reports_user_errors
def predict(
    optimizer: str = typer.Option(..., help="adamw, adam-l2, sgdm or lion"),
    lr: float = typer.Option(..., help="learning rate η"),
    weight_decay: float = typer.Option(..., help="weight decay / ℓ2 coefficient λ"),
    dim: Optional[int] = typer.Option(None, help="C, the fan-in of one neuron (needed for η̂_g and the norm)"),
    beta1: float = typer.Option(0.9, help="Adam/Lion β1"),
    beta2: float = typer.Option(0.999, help="Adam/Lion β2"),
    momentum: float = typer.Option(0.9, help="SGDM momentum α"),
    grad_norm: Optional[float] = typer.Option(
        None, help="RMS gradient norm of a unit-norm weight vector, sqrt(E‖g̃‖²) (SGDM norm, Adam+ℓ2)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Table 1 predictions: RMS update η̂_g, equilibrium rotation η̂_r, equilibrium norm."""
    from rotsweep import theory

    result = theory.predict_cli(
        optimizer, lr=lr, weight_decay=weight_decay, dim=dim, beta1=beta1, beta2=beta2,
        momentum=momentum, grad_norm=grad_norm,
    )
    if as_json:
        print_json(result)
    else:
        for key, value in result.items():
            typer.echo(f"{key:>8}  {value:.6g}" if isinstance(value, float) else f"{key:>8}  {value}")


@app.command()
@reports_user_errors
def randomwalk(
    optimizer: str = typer.Option("adamw", help="adamw, adam-l2, sgdm or lion"),
    steps: int = typer.Option(4000, help="optimizer steps"),
    rotational: bool = typer.Option(False, "--rotational", help="use the rotational variant (Algorithm 1)"),
    out: Optional[Path] = typer.Option(None, help="directory for dynamics.parquet"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The Appendix F random walk: measured equilibrium against Table 1 (Figure 9)."""
    from rotsweep import randomwalk as rw

    result = rw.run(optimizer, steps=steps, rotational=rotational, out=out, seed=seed)
    if as_json:
        print_json(result)
    else:
        typer.echo(rw.format_report(result))


@app.command()
@reports_user_errors
def train(
    out: Path = typer.Option(..., help="run directory (resumed if it holds a checkpoint)"),
    preset: Optional[str] = typer.Option(None, help="a named preset (see `rotsweep presets`)"),
    config: Optional[Path] = typer.Option(None, help="a config.json to run"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key=value (repeatable)"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    data_dir: Optional[Path] = typer.Option(None, help="data sets root (default: $ROTSWEEP_DATA_DIR)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Run one training run into OUT: config.json, status.json, metrics and dynamics Parquet, checkpoint."""
    from rotsweep import presets, train as training
    from rotsweep.config import RunConfig

    if (preset is None) == (config is None):
        raise UserError("give exactly one of --preset NAME or --config FILE")
    run_config = presets.preset(preset) if preset else RunConfig.load(config)
    run_config = run_config.with_overrides(set_)
    status = training.run(run_config, out, device=device, data_dir=data_dir, progress=progress)
    summary = training.read_status(out)
    typer.echo(f"run {run_config.run_id}: {status} at step {summary.get('step')} in {summary.get('wall_s')} s -> {out}")
    if status != "done":
        raise typer.Exit(1)


@app.command("presets")
def list_presets(as_json: bool = typer.Option(False, "--json")) -> None:
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
    as_json: bool = typer.Option(False, "--json"),
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
    inputs: list[Path] = typer.Argument(..., help="text files (or a directory of .txt files)"),
    out: Path = typer.Option(..., help="directory for train.bin and val.bin"),
    val_fraction: float = typer.Option(0.0005, help="share of tokens held out for val.bin"),
) -> None:
    """Tokenize text files with GPT-2 BPE into nanoGPT's train.bin / val.bin (uint16)."""
    from rotsweep.data.tokens import prepare_text as prepare

    result = prepare(inputs, out, val_fraction=val_fraction)
    typer.echo(json.dumps(result, default=str))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
