"""Your own model and data (rotsweep.usercode): builders by import path, their contracts, where the code lives.

The sweeps here run examples/tiny_net.py (a user's network and data set) through the
launcher, the training loop, the rotational optimizer, the recorder and gather, locally
and on the real SLURM cluster, with later commands run from another working directory.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from helpers import needs_slurm, wait_until_stopped
from rotsweep import store, usercode
from rotsweep.launch.plan import default_sweep_dir
from rotsweep.cli import app
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.models import model_for_run, param_groups
from rotsweep.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
runner = CliRunner()


def example_module():
    """examples/tiny_net.py as a module, loaded from its file (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tiny_net_under_test", EXAMPLES / "tiny_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rotsweep_in_shell(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process in `cwd`, as a user's shell runs it (rotsweep itself importable, nothing else)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rotsweep.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def user_project(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the example (module and sweep file) in tmp_path/project, and an unrelated directory."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy(EXAMPLES / "tiny_net.py", project / "tiny_net.py")
    shutil.copy(EXAMPLES / "eta-lambda-user-net.toml", project / "eta-lambda-user-net.toml")
    return project, elsewhere


# A smaller grid of the example: 2 optimizers x 2 lrs on one eta*lambda line, a few steps.
SMALL = ["--grid", "lr=0.01,0.1", "--grid", "eta_lambda=1e-3", "--set", "steps=10", "--set", "eval_interval=10",
         "--set", "dynamics_interval=2", "--set", "warmup_steps=2"]


def check_gathered(sweep: Path) -> None:
    """The four runs of SMALL are done, on the η·λ line, and the RV kept every rotational neuron's norm."""
    runs = pd.read_parquet(sweep / "results" / "runs.parquet")
    assert len(runs) == 4 and set(runs["status"]) == {"done"}
    assert set(runs["model"]) == {"tiny_net:build"} and set(runs["dataset"]) == {"tiny_net:blobs"}
    assert (runs["lr"] * runs["weight_decay"]).round(12).tolist() == [1e-3] * 4
    dynamics = pd.read_parquet(sweep / "results" / "dynamics.parquet")
    norms = dynamics[(dynamics["stat"] == "norm") & (dynamics["reduction"] == "max")]
    norms = norms.merge(runs[["run_id", "rotational"]], on="run_id")
    # Relative change of each weight's largest neuron norm over the run.
    spread = norms.groupby(["rotational", "run_id", "param"])["value"].agg(lambda v: (v.max() - v.min()) / v.max())
    rotational = spread.loc[True]
    assert set(rotational.index.get_level_values("param")) >= {"convs.0.weight", "head.weight"}
    assert rotational.max() < 1e-5, rotational  # Algorithm 1 line 18: every neuron keeps its norm
    assert spread.loc[False].xs("convs.0.weight", level="param").min() > 1e-3  # AdamW's norms move


# --- The contracts, in process ---------------------------------------------------------------


def test_decayed_parameters_choose_the_decayed_and_rotational_tensors():
    model = example_module().TinyConvNet(num_classes=5, decay_head=False)
    groups = param_groups(model, 0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    assert [sorted(names[id(p)] for p in g["params"]) for g in groups] == [
        ["convs.0.weight", "convs.1.weight", "convs.2.weight"],
        ["head.bias", "head.weight", "norms.0.bias", "norms.0.weight", "norms.1.bias", "norms.1.weight",
         "norms.2.bias", "norms.2.weight"],
    ]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    # Under the RV the decayed matrices rotate at constant per-neuron norm; the undecayed head does not.
    optimizer = build_optimizer("adamw", groups, lr=0.05, weight_decay=0.1, rotational=True)
    before = {name: p.detach().flatten(1).norm(dim=1).clone() for name, p in model.named_parameters() if p.dim() > 1}
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 3, 8, 8)).logsumexp(1).mean().backward()
        optimizer.step()
    after = {name: p.detach().flatten(1).norm(dim=1) for name, p in model.named_parameters() if p.dim() > 1}
    for name in ("convs.0.weight", "convs.1.weight", "convs.2.weight"):
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=0)
    assert (after["head.weight"] - before["head.weight"]).abs().max() > 1e-3


def test_without_decayed_parameters_the_default_rule_applies_and_a_bad_name_is_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    assert [len(g["params"]) for g in param_groups(model, 0.1)] == [1, 3]  # the matrix vs bias and LN
    model.decayed_parameters = lambda: ["0.weight", "1.wieght"]
    with pytest.raises(UserError, match=r"decayed_parameters\(\) names '1.wieght', which is not one of its "):
        param_groups(model, 0.1)


def test_model_for_run_calls_the_builder_with_the_config_and_the_data_sizes(tmp_path, monkeypatch):
    (tmp_path / "sizes_net.py").write_text(
        "import torch\n"
        "def build(config, *, num_classes, vocab_size):\n"
        "    return torch.nn.Linear(config.model_options['inputs'], num_classes or vocab_size)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = RunConfig(model="sizes_net:build", model_options={"inputs": 7}, steps=1)
    model = model_for_run(config, num_classes=13, vocab_size=None)
    assert model.weight.shape == (13, 7)
    # Where the module came from is what a job needs on sys.path (not the installed packages).
    assert usercode.code_path([config, RunConfig(steps=1)]) == [str(tmp_path.resolve())]
    assert usercode.code_path([RunConfig(model="json:loads", steps=1)]) == []  # the standard library: found anyway


def test_the_code_path_of_a_package_is_the_directory_holding_it(tmp_path, monkeypatch):
    package = tmp_path / "lab" / "mynets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "convs.py").write_text("import torch\ndef build(config, *, num_classes, vocab_size):\n"
                                      "    return torch.nn.Linear(2, num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    config = RunConfig(model="mynets.convs:build", steps=1)
    assert isinstance(model_for_run(config, num_classes=3, vocab_size=None), torch.nn.Linear)
    assert usercode.code_path([config]) == [str((tmp_path / "lab").resolve())]


def test_label_and_import_paths():
    assert usercode.label("examples.tiny_net:build") == "examples.tiny_net.build"
    assert usercode.label("resnet20") == "resnet20"
    assert default_sweep_dir("x", "tiny_net:build", "tiny") == Path("sweeps/x-tiny_net.build-tiny")


# --- Bad builders: one line at launch, nothing written or submitted ----------------------------

BAD_MODULE = """
import torch
WIDTH = 3
def tensor(config, *, num_classes, vocab_size):
    return torch.zeros(3)
def no_parameters(config, *, num_classes, vocab_size):
    return torch.nn.ReLU()
def old_signature(config):
    return torch.nn.Linear(2, 2)
def raises(config, *, num_classes, vocab_size):
    raise ValueError("width must be even")
def dict_data(config, *, seed, data_dir, device):
    return {"kind": "image"}
"""

SWEEP = """
name = "bad"
preset = "tiny-resnet20-adamw"
scale = "tiny"
[base]
model = "MODEL"
dataset = "DATA"
steps = 5
[axes]
lr = [0.01]
"""

# (model, dataset, whether a dry run already refuses it, the message)
BAD_BUILDERS = {
    "no-module": ("nowhere_net:build", "synthetic-images", True,
                  "model 'nowhere_net:build': no module 'nowhere_net' on the Python path; run rotsweep from the "
                  "directory that holds it, put it next to the sweep file, or pip install its package"),
    "no-function": ("MOD:biuld", "synthetic-images", True,
                    "model 'MOD:biuld': module MOD has no attribute 'biuld'; define build(config, *, num_classes, "
                    "vocab_size) -> torch.nn.Module there"),
    "not-callable": ("MOD:WIDTH", "synthetic-images", True, "model 'MOD:WIDTH' is a int, not a function"),
    "not-an-import-path": ("MOD:", "synthetic-images", True,
                           "model 'MOD:' is not an import path; write \"package.module:function\""),
    "import-raises": ("broken_MOD:build", "synthetic-images", True,
                      "model 'broken_MOD:build': importing broken_MOD raised RuntimeError: half-edited; fix the module"),
    "returns-tensor": ("MOD:tensor", "synthetic-images", False,
                       "model builder 'MOD:tensor' returned a Tensor, not a torch.nn.Module; return the network"),
    "no-parameters": ("MOD:no_parameters", "synthetic-images", False,
                      "model builder 'MOD:no_parameters' returned a ReLU without parameters"),
    "signature": ("MOD:old_signature", "synthetic-images", False,
                  "model builder 'MOD:old_signature' raised TypeError: old_signature() got an unexpected keyword "
                  "argument 'num_classes'; its signature must be build(config, *, num_classes, vocab_size)"),
    "builder-raises": ("MOD:raises", "synthetic-images", False,
                       "model builder 'MOD:raises' raised ValueError: width must be even; fix the builder"),
    "data-no-module": ("resnet20", "nowhere_data:blobs", True,
                       "dataset 'nowhere_data:blobs': no module 'nowhere_data' on the Python path"),
    "data-not-a-dataset": ("resnet20", "MOD:dict_data", False,
                           "dataset builder 'MOD:dict_data' returned a dict that has no kind \"image\" or \"text\"; "
                           "return an object with the rotsweep.data.Dataset contract"),
}


@pytest.mark.parametrize("case", BAD_BUILDERS)
def test_a_bad_builder_is_one_line_at_launch_and_nothing_is_written_or_submitted(tmp_path, case):
    model, dataset, refused_by_dry_run, message = BAD_BUILDERS[case]
    module = "bad_" + case.replace("-", "_")  # one module name per case: imports are cached per process
    (tmp_path / f"{module}.py").write_text(BAD_MODULE)
    (tmp_path / f"broken_{module}.py").write_text("raise RuntimeError('half-edited')\n")
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.replace("MODEL", model.replace("MOD", module)).replace("DATA", dataset.replace("MOD", module)))
    message = message.replace("MOD", module)
    sweep = tmp_path / "out"
    dry = runner.invoke(app, ["launch", str(path), "--executor", "local", "--out", str(sweep), "--dry-run"])
    if refused_by_dry_run:
        assert dry.exit_code == 2 and dry.output.startswith(f"error: {message}"), dry.output
    else:
        assert dry.exit_code == 0, dry.output
    result = runner.invoke(app, ["launch", str(path), "--executor", "local", "--out", str(sweep)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {message}") and result.output.strip().count("\n") == 0, result.output
    assert not sweep.exists()  # no manifest, no run directory, no job


# --- Whole sweeps -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_user_net_sweep_runs_locally_to_done_through_gather(tmp_path):
    project, elsewhere = user_project(tmp_path)
    sweep = tmp_path / "sweep"
    # Launched from an unrelated directory: tiny_net.py is found next to the sweep file.
    launched = rotsweep_in_shell("launch", project / "eta-lambda-user-net.toml", *SMALL, "--executor", "local",
                                 "--max-parallel", "2", "--out", sweep, "--json", cwd=elsewhere)
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["submitted_runs"] == 4
    assert store.read_manifest(sweep)["code_path"] == [str(project.resolve())]
    assert wait_until_stopped(sweep)["counts"] == {"done": 4}
    gathered = rotsweep_in_shell("gather", sweep, cwd=elsewhere)
    assert gathered.returncode == 0, gathered.stderr
    check_gathered(sweep)



@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_the_user_net_sweep_on_slurm_is_managed_from_another_directory(tmp_path):
    project, elsewhere = user_project(tmp_path)
    sweep_file = tmp_path / "eta.toml"  # the file apart from the module: found through the working directory
    shutil.move(project / "eta-lambda-user-net.toml", sweep_file)
    sweep = tmp_path / "sweep"
    slurm = ["--executor", "slurm", "--profile", "local"]
    launched = rotsweep_in_shell("launch", sweep_file, *SMALL, *slurm, "--out", sweep, "--json", cwd=project)
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["submitted_runs"] == 4
    assert store.read_manifest(sweep)["code_path"] == [str(project.resolve())]

    # Everything after from a shell in another directory, which cannot import tiny_net by itself.
    assert rotsweep_in_shell("launch", sweep_file, *SMALL, "--dry-run", cwd=elsewhere).returncode == 2
    assert wait_until_stopped(sweep)["counts"] == {"done": 4}
    status = rotsweep_in_shell("status", sweep, "--json", cwd=elsewhere)
    assert status.returncode == 0 and json.loads(status.stdout)["counts"] == {"done": 4}, status.stderr
    # A run lost: the relaunch from elsewhere plans with the recorded code path and submits only that run,
    # whose job (started in `elsewhere`) imports tiny_net from the recorded directory on the node.
    lost = json.loads(status.stdout)["runs"][0]["run_id"]
    shutil.rmtree(store.run_dir(sweep, lost))
    relaunched = rotsweep_in_shell("launch", sweep, *slurm, "--json", cwd=elsewhere)
    assert relaunched.returncode == 0, relaunched.stderr
    assert (json.loads(relaunched.stdout)["submitted_runs"], json.loads(relaunched.stdout)["already_done"]) == (1, 3)
    assert wait_until_stopped(sweep)["counts"] == {"done": 4}
    gathered = rotsweep_in_shell("gather", sweep, cwd=elsewhere)
    assert gathered.returncode == 0, gathered.stderr
    check_gathered(sweep)


def test_heatmap_rows_join_weight_decays_a_rounding_error_apart():
    # Two η·λ lines over lr = 0.01, 0.1 (the example's grid): λ = 1e-3/0.01 is 0.1 and 1e-2/0.1 is
    # 0.09999999999999999, the same weight decay, so one heatmap row, not two rows labelled 0.1.
    from rotsweep.analysis import figures

    lrs, lines = [0.01, 0.1], [1e-3, 1e-2]
    runs = pd.DataFrame([dict(variant="AdamW", lr=lr, weight_decay=line / lr, status="done", seed=0,
                              final_val_top1=float(i)) for i, (line, lr) in enumerate((a, b) for a in lines for b in lrs)])
    assert runs["weight_decay"].nunique() == 4  # 0.1, 0.01, 1.0 and 0.09999999999999999
    _, cells, panels = figures.heatmap_cells(runs)
    assert panels == ["AdamW"] and sorted(cells["weight_decay"]) == [0.01, 0.1, 0.1, 1.0]
    assert cells.groupby("weight_decay")["lr"].nunique()[0.1] == 2  # both runs at λ = 0.1 in one row
