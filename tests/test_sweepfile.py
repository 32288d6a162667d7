"""Sweep files: parsing into the experiments' vocabulary, the built-ins as files, bad files, relaunch from the manifest."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rotsweep import launch, store, sweepfile, theory
from rotsweep.launch.manifest import update_manifest
from rotsweep.cli import app
from rotsweep.errors import UserError
from rotsweep.experiments import EXPERIMENTS, SCALES
from helpers import wait_until_stopped

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# A tiny sweep whose runs take a second or two each on a CPU.
TINY = """
name = "mine"
preset = "tiny-resnet20-adamw"
scale = "tiny"
[base]
steps = 4
eval_interval = 2
checkpoint_interval = 2
dynamics_interval = 2
train_log_interval = 2
warmup_steps = 0
eta_lambda = 5e-3
[axes]
optimizer = [{label = "AdamW", optimizer = "adamw"}, {label = "RV-AdamW", optimizer = "adamw", rotational = true}]
lr = LRS
"""


# --- The built-ins are sweep files ---------------------------------------------------------


@pytest.mark.parametrize("name,model", [(e.name, m) for e in EXPERIMENTS.values() for m in e.models])
def test_every_builtin_printed_as_a_file_loads_back_to_its_runs(name, model):
    experiment = EXPERIMENTS[name]
    result = cli("experiments", name, "--toml", "--model", model)
    assert result.exit_code == 0, result.output
    loaded = sweepfile.parse(result.output, origin=f"{name}.toml")
    assert loaded.name == name
    for scale in SCALES:
        builtin, from_file = experiment.sweep(model, scale), loaded.sweep(scale)
        assert [c.run_id for c in from_file.runs()] == [c.run_id for c in builtin.runs()]
        assert from_file.axes() == builtin.axes()
        assert [p.labels for p in from_file.points] == [p.labels for p in builtin.points]
        assert from_file.sources == builtin.sources
        assert from_file.default_seeds() == builtin.default_seeds()


def test_a_printed_builtin_launches_into_the_builtins_sweep_with_the_same_dry_run(tmp_path):
    path = write(tmp_path, cli("experiments", "warmup", "--toml", "--model", "resnet50").output)
    from_file = json.loads(cli("launch", path, "--scale", "tiny", "--dry-run", "--json", "--executor", "local").output)
    builtin = json.loads(cli("launch", "warmup", "--model", "resnet50", "--scale", "tiny", "--dry-run", "--json",
                             "--executor", "local").output)
    assert from_file == builtin  # same runs, axes, sweep directory: the same sweep


# --- What a file says ----------------------------------------------------------------------


def test_ranges_variants_and_derived_eta_lambda(tmp_path):
    loaded = sweepfile.load(write(tmp_path, TINY.replace("LRS", "{logspace = [1e-4, 1, 5]}")))
    runs = loaded.sweep().runs()
    assert loaded.sweep().axes() == {"optimizer": ["AdamW", "RV-AdamW"], "lr": [1e-4, 1e-3, 1e-2, 0.1, 1.0]}
    assert [c.rotational for c in runs] == [False] * 5 + [True] * 5  # the last axis varies fastest
    for config in runs:
        assert config.weight_decay == 5e-3 / config.lr and config.steps == 4  # preset overridden by [base]
    assert loaded.default_scale == "tiny" and loaded.model() == "resnet20"
    lin = sweepfile.load(write(tmp_path, TINY.replace("LRS", "{linspace = [0.1, 0.3, 3]}")))
    assert lin.sweep().axes()["lr"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("optimizer,extra", [("adamw", ""), ("sgdm", "momentum = 0.8"), ("lion", "beta2 = 0.99")])
def test_eta_r_axis_gives_the_table1_rotation_at_every_lr(tmp_path, optimizer, extra):
    text = f"""
name = "rot"
[base]
steps = 10
optimizer = "{optimizer}"
{extra}
[axes]
lr = [1e-3, 1e-2]
eta_r = [0.01, 0.03]
"""
    runs = sweepfile.load(write(tmp_path, text)).sweep().runs()
    assert len(runs) == 4
    targets = [0.01, 0.03, 0.01, 0.03]
    for config, target in zip(runs, targets):
        rotation = theory.expected_rotation(optimizer, config.lr, config.weight_decay, beta1=config.beta1,
                                            beta2=config.beta2, momentum=config.momentum)
        assert rotation == pytest.approx(target, rel=1e-12)


def test_weight_decay_for_rotation_against_table1_closed_forms():
    # AdamW η̂_r = sqrt(2ηλ(1−β1)/(1+β1)), SGDM sqrt(2ηλ/(1+α)), Lion sqrt(πηλK) (Table 1) solved for λ.
    assert theory.weight_decay_for_rotation("adamw", 0.01, 0.02, beta1=0.8) == pytest.approx(
        0.02**2 * 1.8 / (2 * 0.01 * 0.2), rel=1e-12)
    assert theory.weight_decay_for_rotation("sgdm", 0.1, 0.02, momentum=0.9) == pytest.approx(
        0.02**2 * 1.9 / (2 * 0.1), rel=1e-12)
    k = (1 - 0.9) ** 2 + 0.9**2 * (1 - 0.99) / (1 + 0.99)
    assert theory.weight_decay_for_rotation("lion", 1e-4, 0.02, beta1=0.9, beta2=0.99) == pytest.approx(
        0.02**2 / (math.pi * 1e-4 * k), rel=1e-12)
    with pytest.raises(UserError, match="adam-l2"):
        theory.weight_decay_for_rotation("adam-l2", 0.01, 0.02)


def test_zipped_axis_grid_blocks_their_seeds_and_scale_blocks(tmp_path):
    text = """
name = "blocks"
seeds = [0, 1]
[base]
steps = 10
[[grid]]
[grid.axes]
batch = {zip = {batch_size = [32, 64], lr = [0.1, 0.2]}}
weight_decay = [0.0, 0.5]
[[grid]]
seeds = [7]
[grid.set]
optimizer = "sgdm"
[grid.axes]
lr = [0.3]
[tiny.base]
tiny = true
[paper.base]
steps = 1000
"""
    loaded = sweepfile.load(write(tmp_path, text))
    tiny = loaded.sweep("tiny")
    assert [p.labels for p in tiny.points] == [
        {"batch_size": 32, "lr": 0.1, "weight_decay": 0.0}, {"batch_size": 32, "lr": 0.1, "weight_decay": 0.5},
        {"batch_size": 64, "lr": 0.2, "weight_decay": 0.0}, {"batch_size": 64, "lr": 0.2, "weight_decay": 0.5},
        {"lr": 0.3}]
    runs = tiny.runs()
    assert [(c.batch_size, c.lr, c.seed, c.optimizer) for c in runs] == [
        (32, 0.1, 0, "adamw"), (32, 0.1, 0, "adamw"), (64, 0.2, 0, "adamw"), (64, 0.2, 0, "adamw"),
        (128, 0.3, 7, "sgdm"), (32, 0.1, 1, "adamw"), (32, 0.1, 1, "adamw"), (64, 0.2, 1, "adamw"),
        (64, 0.2, 1, "adamw")]
    assert all(c.tiny and c.steps == 10 for c in runs)  # [tiny.base] merged into the shared [base]
    assert all(not c.tiny and c.steps == 1000 for c in loaded.sweep("paper").runs())


# --- Bad files: one line naming the file, the key and the fix; nothing written -------------

BAD_FILES = [
    ('name = "x"\n[base]\nsteps = 5\nlearning_rate = 0.1\n', "base.learning_rate: unknown RunConfig field 'learning_rate'"),
    ('name = "x"\n[base]\nsteps = 5\n[axes]\nlr = [0.1, "fast"]\n', "axes.lr: RunConfig field 'lr' expects float"),
    ('name = "x"\n[base]\nsteps = 5\n[axes]\nlr = []\n', "axes.lr: the axis is empty; give at least one value"),
    ('name = "x"\n[base]\nsteps = 5\n[axes]\nlr = [0.1]\nv = [{label = "a", lr = 0.2}]\n',
     "axes 'lr' and 'v' both set 'lr'"),
    ('name = "x"\n[base]\nsteps = 5\n[axes]\nweight_decay = [0.1]\neta_lambda = [1e-3]\n',
     "axes 'weight_decay' and 'eta_lambda' both set 'weight_decay'"),
    ('name = "x"\n[base]\nsteps = 5\neta_lambda = 1e-3\n[axes]\nweight_decay = [0.1]\n',
     "axes.weight_decay: weight_decay is also given by eta_lambda"),
    ('name = "x"\n[base]\nsteps = 5\noptimizer = "adam-l2"\neta_r = 0.01\n', "eta_r: η̂_r of adam-l2 depends"),
    ('name = "x"\n[base]\nsteps = 5\n[axes]\nlr = 0.1\n', "axes.lr: an axis needs a list of values"),
    ('name = "x"\n[base]\nsteps = 5\n[axes]\nlr = {logspace = [0, 1, 3]}\n', "axes.lr.logspace: expected [start, stop, count]"),
    ('name = "x"\nbase = 3\n', "base: expected a table"),
    ('name = "x"\nseed = [1]\n', "seed: unknown key (did you mean 'seeds'?)"),
    ('[base]\nsteps = 5\n', "name: missing"),
    ('name = "x"\n[axes\n', "not valid TOML"),
    ('name = "x"\n[base]\nlr = 0.1\n', "[paper] runs: a run needs exactly one of `steps` or `epochs`"),
    ('name = "x"\npreset = "tiny-resnet-adamw"\n', "preset: unknown preset 'tiny-resnet-adamw' (did you mean"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_bad_file_is_one_line_naming_file_and_key_and_writes_nothing(tmp_path, text, message):
    path = write(tmp_path, text)
    sweep = tmp_path / "sweep"
    result = cli("launch", path, "--executor", "local", "--out", sweep)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}: ") and message in result.output, result.output
    assert result.output.strip().count("\n") == 0
    assert not sweep.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]


def test_model_flag_and_missing_file_are_refused(tmp_path):
    path = write(tmp_path, TINY.replace("LRS", "[0.1]"))
    assert "--model does not apply to a sweep file" in cli("launch", path, "--model", "gpt2", "--dry-run").output
    assert "no sweep file" in cli("launch", tmp_path / "nope.toml", "--dry-run").output
    assert "--model is required" in cli("launch", "warmup", "--dry-run").output
    only_tiny = write(tmp_path, 'name = "t"\n[tiny.base]\nsteps = 5\n', name="tiny.toml")
    assert f"{only_tiny} defines no paper-scale sweep (it has [tiny])" in cli(
        "launch", only_tiny, "--scale", "paper", "--dry-run").output
    assert dry_run(only_tiny)["scale"] == "tiny"  # a file's only scale is its default


# --- Launching, and later shells without the file ----------------------------------------


def test_file_dry_run_json_has_the_builtins_keys(tmp_path):
    path = write(tmp_path, TINY.replace("LRS", "[0.1]"))
    from_file = json.loads(cli("launch", path, "--dry-run", "--json", "--executor", "local").output)
    builtin = json.loads(cli("launch", "eta-lambda", "--model", "resnet20", "--scale", "tiny", "--dry-run", "--json",
                             "--executor", "local").output)
    assert set(from_file) == set(builtin)
    assert set(from_file["runs"][0]) == set(builtin["runs"][0])
    assert (from_file["experiment"], from_file["model"], from_file["scale"]) == ("mine", "resnet20", "tiny")
    assert from_file["sweep"] == str(Path("sweeps") / "mine-resnet20-tiny")


def rotsweep_in_new_shell(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, in another working directory, the way a later shell runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rotsweep.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)



def test_file_sweep_runs_then_a_new_shell_manages_it_without_the_file(tmp_path):
    path = write(tmp_path, TINY.replace("LRS", "[0.01]"))
    sweep = tmp_path / "sweep"
    first = json.loads(cli("launch", path, "--executor", "local", "--max-parallel", "1", "--out", sweep,
                           "--json").output)
    assert first["submitted_runs"] == 2
    assert wait_until_stopped(sweep)["counts"] == {"done": 2}
    manifest = store.read_manifest(sweep)
    assert manifest["sweep_file"] == {"path": str(path), "text": path.read_text()}

    # Edit the file: a second lr. Relaunching adds only the two new runs.
    path.write_text(TINY.replace("LRS", "[0.01, 0.02]"))
    second = json.loads(cli("launch", path, "--executor", "local", "--max-parallel", "1", "--out", sweep,
                            "--json").output)
    assert (second["submitted_runs"], second["already_done"], second["total_runs"]) == (2, 2, 4)
    assert wait_until_stopped(sweep)["counts"] == {"done": 4}
    assert store.read_manifest(sweep)["axes"]["lr"] == [0.01, 0.02]

    # A later shell elsewhere, the file gone: status, logs, gather, cancel and relaunch from the directory.
    path.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = rotsweep_in_new_shell("status", sweep, "--json", cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["experiment"] == "mine" and report["counts"] == {"done": 4}
    run_id = report["runs"][0]["run_id"]
    logs = rotsweep_in_new_shell("logs", sweep, run_id, cwd=elsewhere)
    assert logs.returncode == 0 and "== run log" in logs.stdout
    gathered = rotsweep_in_new_shell("gather", sweep, "--json", cwd=elsewhere)
    assert gathered.returncode == 0, gathered.stderr
    assert (sweep / "results" / "runs.parquet").exists()
    cancelled = rotsweep_in_new_shell("cancel", sweep, cwd=elsewhere)
    assert cancelled.returncode == 0 and "cancelled 0 job(s)" in cancelled.stdout
    relaunch = rotsweep_in_new_shell("launch", sweep, "--executor", "local", "--json", cwd=elsewhere)
    assert relaunch.returncode == 0, relaunch.stderr
    again = json.loads(relaunch.stdout)
    assert (again["submitted_runs"], again["already_done"]) == (0, 4)
    assert not (elsewhere / "sweeps").exists()  # the recorded directory, not a new one


# --- Axes on the command line ----------------------------------------------------------------


def dry_run(*args) -> dict:
    result = cli("launch", *args, "--dry-run", "--json", "--executor", "local")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_grid_replaces_a_builtin_axis_keeping_its_eta_lambda_line():
    report = dry_run("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--grid", "lr=0.5,2.0")
    assert report["axes"] == {"optimizer": ["AdamW", "RV-AdamW"], "lr": [0.5, 2.0]}
    configs = [run["config"] for run in report["runs"]]
    assert [(c["lr"], c["rotational"]) for c in configs] == [(0.5, False), (2.0, False), (0.5, True), (2.0, True)]
    assert all(c["weight_decay"] == 5e-3 / c["lr"] for c in configs)  # the tiny sweep's η·λ = 5e-3


def test_grid_adds_an_axis_and_takes_ranges(tmp_path):
    path = write(tmp_path, TINY.replace("LRS", "[0.01]"))
    report = dry_run(path, "--grid", "beta1=linspace:0.8:0.9:3", "--grid", "lr=logspace:1e-3:1e-1:3")
    assert report["axes"] == {"optimizer": ["AdamW", "RV-AdamW"], "lr": [1e-3, 1e-2, 0.1], "beta1": [0.8, 0.85, 0.9]}
    assert len(report["runs"]) == 18
    builtin = dry_run("weight-std", "--model", "resnet18-ln", "--scale", "tiny", "--grid", "batch_size=32,64")
    assert len(builtin["runs"]) == 2 * 9 and builtin["axes"]["batch_size"] == [32, 64]


@pytest.mark.parametrize("args,message", [
    (["eta-lambda", "--model", "resnet20", "--set", "lr=0.01"], "lr is swept by the grid of eta-lambda"),
    (["eta-lambda", "--model", "resnet20", "--set", "weight_decay=0.1"], "--grid weight_decay=V1,V2"),
    (["eta-lambda", "--model", "resnet20", "--grid", "weight_decay=0.1"], "weight_decay is also given by eta_lambda"),
    (["eta-lambda", "--model", "resnet20", "--grid", "lr"], "malformed --grid 'lr'"),
    (["eta-lambda", "--model", "resnet20", "--grid", "seed=0,1"], "list them in seeds"),
    (["eta-lambda", "--model", "resnet20", "--grid", "rotational=false,true"], "both set 'rotational'"),
])
def test_set_on_an_axis_and_bad_grids_are_one_line(args, message):
    result = cli("launch", *args, "--scale", "tiny", "--dry-run")
    assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output, result.output
    assert result.output.strip().count("\n") == 0


def test_a_changed_grid_is_another_sweep_and_is_relaunched_with_it(tmp_path):
    sweep = tmp_path / "sweep"
    path = write(tmp_path, TINY.replace("LRS", "[0.01]"))
    plan = launch.make_file_plan(sweepfile.load(path), out=sweep, axes={"lr": [0.02, 0.03]})
    update_manifest(plan, "local", None)  # as a launch records it, without running anything
    assert store.read_manifest(sweep)["axes_changed"] == {"lr": [0.02, 0.03]}
    again = launch.make_relaunch_plan(sweep)
    assert [run.config.run_id for run in again.runs] == [run.config.run_id for run in plan.runs]
    with pytest.raises(UserError, match="holds another sweep"):
        launch.make_file_plan(sweepfile.load(path), out=sweep)


def test_a_builtin_sweep_is_named_after_the_model_its_runs_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = dry_run("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--set", "model=vgg13")
    assert report["model"] == "vgg13" and report["sweep"] == str(Path("sweeps") / "eta-lambda-vgg13-tiny")
    assert {run["config"]["model"] for run in report["runs"]} == {"vgg13"}
    plan = launch.make_plan("eta-lambda", "resnet20", scale="tiny", overrides=["model=vgg13"])
    update_manifest(plan, "local", None)
    manifest = store.read_manifest(plan.sweep)
    assert (manifest["model"], manifest["experiment_model"]) == ("vgg13", "resnet20")
    again = launch.make_relaunch_plan(plan.sweep)
    assert [run.config.run_id for run in again.runs] == [run.config.run_id for run in plan.runs]
