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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
