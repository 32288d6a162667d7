"""Bad input and faults, command by command: one line, exit code 2, nothing written.

Every case runs the real CLI (typer's CliRunner, in process) on real files: a
finished local sweep, corrupt Parquet and JSON files, bad TOML profiles, a
truncated checkpoint. A bad input must give exit code 2 and one line on stderr
that starts with "error: ", no traceback, and leave every file that existed
byte-identical (and create none). Faults the commands must tolerate (a corrupt
file inside a sweep) must be reported, not fatal.
"""

import json
import math
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main
from typer.testing import CliRunner

from rotsweep import __version__, cli, launch, store, theory
from rotsweep.launch.plan import run_state, should_submit
from rotsweep.analysis import figures
from rotsweep.analysis.catalog import CATALOG
from rotsweep.analysis.gather import output_paths
from helpers import needs_slurm, wait_until_stopped

runner = CliRunner()

# zero-shot at tiny scale: 6 runs of resnet20 on synthetic images, shortened to 24 steps a run.
SWEEP_ARGS = ["zero-shot", "--model", "resnet20", "--scale", "tiny", "--executor", "local"]
FAST = ["--set", "steps=24", "--set", "eval_interval=12", "--set", "checkpoint_interval=12",
        "--set", "dynamics_interval=6"]
RUNS = 6


def invoke(*args):
    return runner.invoke(cli.app, [str(arg) for arg in args])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) under root, by relative path."""
    return {str(path.relative_to(root)): (None if path.is_dir() else path.read_bytes())
            for path in sorted(root.rglob("*"))}


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, one stderr line `error: ...` containing the fragments, no traceback."""
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        f"raised {result.exception!r}"
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_refused(root: Path, args: list, *fragments: str) -> str:
    """The command is refused in one line and nothing under root changes."""
    before = snapshot(root)
    line = assert_one_line_error(invoke(*args), *fragments)
    assert snapshot(root) == before, "files changed"
    return line


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished, gathered local sweep (read only: tests that change it copy it first)."""
    sweep = tmp_path_factory.mktemp("finished") / "sweep"
    # --keep-checkpoints all: tests below damage a finished run's full checkpoint (by default a
    # finished run keeps only its weights, rotsweep.clean).
    result = invoke("launch", *SWEEP_ARGS, "--out", sweep, "--max-parallel", "4", *FAST, "--keep-checkpoints", "all",
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["jobs"] == 3  # 6 runs in a pool of 4: 2 runs per job
    report = wait_until_stopped(sweep)
    assert report["counts"] == {"done": RUNS}, report
    assert invoke("gather", sweep).exit_code == 0
    return sweep



@pytest.fixture
def sweep(finished, tmp_path) -> Path:
    copy = tmp_path / "sweep"
    shutil.copytree(finished, copy)
    return copy


def run_ids(sweep: Path) -> list[str]:
    return store.read_manifest(sweep)["runs"]


# --- B. Relaunching a finished sweep: the "is anything left?" check --------------------------


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_dry_run_with_nothing_to_submit_reports_zero_and_no_header(sweep, tmp_path, executor):
    before = snapshot(tmp_path)
    args = ["launch", "zero-shot", "--model", "resnet20", "--scale", "tiny", "--executor", executor, "--out", sweep,
            *FAST, "--dry-run"]
    as_json = invoke(*args, "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert (report["to_submit"], report["already_done"], report["jobs"]) == (0, RUNS, 0)
    assert "sbatch_header" not in report
    text = invoke(*args)
    assert text.exit_code == 0 and "to_submit: 0" in text.stdout and "#SBATCH" not in text.stdout
    assert snapshot(tmp_path) == before


# --- B. One corrupt file in a sweep: status and launch report it, and go on ----------------


def _corrupt_metrics(run_dir: Path, kind: str) -> None:
    path = run_dir / store.METRICS_FILE
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # a valid Parquet file without the metric columns
        pq.write_table(pa.table({"something": [1, 2]}), path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "column-less"])
def test_a_corrupt_metrics_file_is_reported_by_status_and_launch(sweep, tmp_path, kind):
    victim = run_ids(sweep)[0]
    _corrupt_metrics(store.run_dir(sweep, victim), kind)
    before = snapshot(tmp_path)

    status = invoke("status", sweep)
    assert status.exit_code == 0, status.output
    assert f"problem: {victim}: {store.METRICS_FILE}" in status.stdout
    assert "6 done" in status.stdout  # the run is still done: only its last metric is unknown
    dry = invoke("launch", *SWEEP_ARGS, "--out", sweep, *FAST, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["to_submit"] == 0
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content", [b'{"status": "do', b"", b"[1, 2]", b'{"step": 3}', b'{"status": "weird"}',
                                     b"\xff\xfe not utf-8"])
def test_a_corrupt_status_file_makes_its_run_unreadable_not_fatal(sweep, tmp_path, content):
    victim = run_ids(sweep)[1]
    (store.run_dir(sweep, victim) / store.STATUS_FILE).write_bytes(content)
    before = snapshot(tmp_path)

    status = invoke("status", sweep, "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report["counts"] == {"done": RUNS - 1, "unreadable": 1}
    assert any(problem.startswith(f"{victim}: {store.STATUS_FILE}") for problem in report["problems"])
    dry = invoke("launch", *SWEEP_ARGS, "--out", sweep, *FAST, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"problem: {victim}: {store.STATUS_FILE}" in dry.stdout
    assert "0 to submit" in dry.stdout  # an unreadable run is not trained again behind the user's back
    assert snapshot(tmp_path) == before

    # A real launch goes on too: it submits nothing, records the launch and leaves the file alone.
    launched = invoke("launch", *SWEEP_ARGS, "--out", sweep, *FAST, "--json")
    assert launched.exit_code == 0, launched.output
    assert json.loads(launched.stdout)["submitted_runs"] == 0
    assert (store.run_dir(sweep, victim) / store.STATUS_FILE).read_bytes() == content


@pytest.mark.parametrize("content", [b'{"model": "resn', b"[1]", b'{"lr": "x"}', b"\xff\xfe", b'{"lr": 0.5}'])
def test_a_corrupt_or_foreign_config_is_reported_and_its_run_left_alone(sweep, tmp_path, content):
    victim = run_ids(sweep)[2]
    (store.run_dir(sweep, victim) / store.STATUS_FILE).unlink()  # a run that would be submitted
    (store.run_dir(sweep, victim) / store.CONFIG_FILE).write_bytes(content)
    before = snapshot(tmp_path)
    dry = invoke("launch", *SWEEP_ARGS, "--out", sweep, *FAST, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["to_submit"] == 0
    assert any(problem.startswith(f"{victim}: {store.CONFIG_FILE}") for problem in report["problems"])
    assert snapshot(tmp_path) == before
    launched = invoke("launch", *SWEEP_ARGS, "--out", sweep, *FAST, "--json")
    assert launched.exit_code == 0, launched.output
    assert json.loads(launched.stdout)["submitted_runs"] == 0
    assert (store.run_dir(sweep, victim) / store.CONFIG_FILE).read_bytes() == content


@pytest.mark.parametrize("content", [b"{garbage", b"[]", b'{"experiment": 3}',
                                     b'{"experiment": "zero-shot", "model": "resnet20", "scale": "tiny", "jobs": []}',
                                     b'{"experiment": "zero-shot", "model": "resnet20", "scale": "tiny", "overrides": 5}'])
def test_a_garbage_manifest_is_tolerated_by_status_and_refused_by_launch(sweep, tmp_path, content):
    (sweep / store.MANIFEST_FILE).write_bytes(content)
    before = snapshot(tmp_path)
    status = invoke("status", sweep, "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report["counts"] == {"done": RUNS}  # the run directories still say what happened
    assert store.MANIFEST_FILE in report["problems"][0]
    for args in (["launch", *SWEEP_ARGS, "--out", sweep, *FAST], ["launch", *SWEEP_ARGS, "--out", sweep, "--dry-run"],
                 ["cancel", sweep], ["logs", sweep, sorted(os.listdir(sweep / "runs"))[0]]):
        assert_one_line_error(invoke(*args), store.MANIFEST_FILE, "move it away")
    assert snapshot(tmp_path) == before


# --- B. Values that would reach torch, or JSON, as nonsense -------------------------------


BAD_VALUES = [
    ("lr=NaN", "lr=nan must be a finite number"),
    ("weight_decay=Infinity", "weight_decay=inf must be a finite number"),
    ("beta2=-Infinity", "beta2=-inf must be a finite number"),
    ("min_lr=NaN", "min_lr=nan must be a finite number"),
    ("beta1=1", "beta1=1.0 must be in [0.0, 1.0)"),
    ("eps=-1e-8", "eps=-1e-08 must be in [0.0, ∞)"),
    ("label_smoothing=1.5", "label_smoothing=1.5 must be in [0.0, 1.0]"),
    ("seed=-1", "seed=-1 must be in [0, 9223372036854775807]"),
    (f"seed={2**63}", f"seed={2**63} must be in"),
    ("train_log_interval=0", "train_log_interval=0 must be positive"),
    ("warmup_steps=-5", "warmup_steps=-5 must be in [0, ∞)"),
    ("warmup_epochs=-1", "warmup_epochs=-1.0 must be in"),
    ("warmup_steps=1000000000", "warmup_steps=1000000000 is longer than any run can be"),
    ("eval_interval=-1", "eval_interval=-1 must be in"),
    ("grad_clip=-1", "grad_clip=-1.0 must be in"),
    ("min_lr=10", "min_lr=10.0 must be in [0.0, lr]"),
    ("lr_power=0", "lr_power=0.0 must be positive"),
    ("lr_power=-1", "lr_power=-1.0 must be positive"),
    ("steps=1000000000000", "steps=1000000000000 must be between 1 and 100,000,000"),
    ('dataset_options={"image_size": "x"}', "option image_size='x' is invalid, expected int"),
    ('dataset_options={"augment": 1}', "option augment=1 is invalid, expected bool"),
    ("model=nosuch", "unknown model 'nosuch'"),
    ("dataset=nosuch", "unknown data set 'nosuch'"),
    ('model_options={"width": 0}', "option width=0 is invalid"),
]


@pytest.mark.parametrize("assignment, message", BAD_VALUES)
def test_bad_values_are_refused_by_train_and_by_a_dry_run(tmp_path, assignment, message):
    assert_refused(tmp_path, ["train", "--out", tmp_path / "run", "--preset", "tiny-resnet20-adamw",
                              "--set", assignment, "--no-progress"], message)
    assert_refused(tmp_path, ["launch", *SWEEP_ARGS, "--out", tmp_path / "sweep", "--set", assignment, "--dry-run"],
                   message)
    assert_refused(tmp_path, ["launch", *SWEEP_ARGS, "--out", tmp_path / "sweep", "--set", assignment], message)


@pytest.mark.parametrize("device, message", [("nosuchdev", "unknown device 'nosuchdev'"),
                                             ("cuda", "is not available"), ("cuda:7", "is not available")])
def test_a_device_that_is_not_here_is_refused_before_anything_is_written(tmp_path, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    assert_refused(tmp_path, ["train", "--out", tmp_path / "run", "--preset", "tiny-resnet20-adamw",
                              "--device", device, "--no-progress"], message)


def test_train_config_must_be_a_json_object(tmp_path):
    for content in ("[1, 2]", '"a string"', "3"):
        (tmp_path / "config.json").write_text(content)
        assert_refused(tmp_path, ["train", "--out", tmp_path / "run", "--config", tmp_path / "config.json"],
                       "not an object of RunConfig fields")


# --- B. Output directories that cannot be one -----------------------------------------------


def _output_commands(out) -> list[list]:
    return [
        ["train", "--out", out, "--preset", "tiny-resnet20-adamw", "--no-progress"],
        ["launch", *SWEEP_ARGS, "--out", out, "--dry-run"],
        ["launch", *SWEEP_ARGS, "--out", out],
        ["randomwalk", "--steps", "40", "--out", out],
        ["demo", "--out", out, "--quick"],
    ]


@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_an_output_that_is_a_file_is_refused_by_every_command(tmp_path, where):
    (tmp_path / "file").write_text("keep me\n")
    out = tmp_path / "file" if where == "a file" else tmp_path / "file" / "sub"
    for args in _output_commands(out):
        assert_refused(tmp_path, args, str(out))


def test_an_empty_output_is_refused_not_taken_for_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in [*_output_commands(""), ["prepare-text", tmp_path, "--out", ""]]:
        assert_refused(tmp_path, args, "--out is empty")


def test_an_unwritable_output_is_refused(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    else:  # root may write in any directory of an ordinary file system, but /proc/sys takes no new entries
        locked = Path("/proc/sys")
    assert not os.access(locked, os.W_OK)
    for args in _output_commands(locked / "rotsweep-out"):
        assert_refused(tmp_path, args, f"cannot write in {locked}")
    assert not (locked / "rotsweep-out").exists()


def test_results_or_figures_that_are_files_are_refused(sweep, tmp_path):
    shutil.rmtree(sweep / "results")
    (sweep / "results").write_text("not a directory\n")
    assert_refused(tmp_path, ["gather", sweep], "results")
    (sweep / "results").unlink()
    assert invoke("gather", sweep).exit_code == 0
    (sweep / figures.FIGURES_DIR).write_text("not a directory\n")
    assert_refused(tmp_path, ["plot", "curves", sweep], figures.FIGURES_DIR)


# --- B. Cluster profiles: refused before the manifest is written -----------------------------


@pytest.mark.parametrize("name, content, message", [
    ("latin1.toml", "slurm_partition = \"d\xe9bug\"\n".encode("latin-1"), "not UTF-8"),
    ("dir.toml", None, "a directory, not a file"),
    ("type.toml", b'cpus_per_task = "one"\n', "cpus_per_task = 'one' has the wrong type, expected int"),
    ("flag.toml", b"stderr_to_stdout = 1\n", "expected bool"),
    ("unknown.toml", b"cpus_per_tsak = 1\n", "unknown key 'cpus_per_tsak'"),
    ("syntax.toml", b"cpus_per_task = \n", "is not valid TOML"),
])
def test_bad_profiles_are_refused_before_anything_is_written(tmp_path, name, content, message):
    profile = tmp_path / name
    if content is None:
        profile.mkdir()
    else:
        profile.write_bytes(content)
    for executor in ("slurm", "local"):
        for dry in ([], ["--dry-run"]):
            assert_refused(tmp_path, ["launch", "zero-shot", "--model", "resnet20", "--scale", "tiny", "--executor",
                                      executor, "--profile", profile, "--out", tmp_path / "sweep", *dry], message)


# --- B. Options out of range ----------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["launch", *SWEEP_ARGS, "--runs-per-job", "0", "--dry-run"], "--runs-per-job"),
    (["launch", *SWEEP_ARGS, "--max-parallel", "0", "--dry-run"], "--max-parallel"),
    (["status", "SWEEP", "--watch", "--interval", "-1"], "--interval"),
    (["status", "SWEEP", "--watch", "--interval", "0"], "--interval"),
    (["logs", "SWEEP", "RUN", "--lines", "0"], "--lines"),
    (["logs", "SWEEP", "RUN", "--lines", "-5"], "--lines"),
    (["demo", "--max-parallel", "0"], "--max-parallel"),
    (["predict", "--optimizer", "adamw", "--lr", "1", "--weight-decay", "1", "--dim", "0"], "--dim"),
])
def test_options_out_of_range_are_one_line(finished, tmp_path, args, message):
    args = [finished if a == "SWEEP" else run_ids(finished)[0] if a == "RUN" else a for a in args]
    assert_refused(tmp_path, args, message)


def test_plot_with_a_corrupt_runs_table_names_the_fix(sweep, tmp_path):
    path = output_paths(sweep)["runs"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for command in ("heatmap", "lr-sweep", "curves", "imbalance"):
        assert_refused(tmp_path, ["plot", command, sweep], f"rotsweep gather --full {sweep}")


def test_plots_say_what_gather_skipped_and_mark_an_unreadable_run_as_such(sweep, tmp_path):
    """D: a done run whose status.json gather cannot read is "unreadable" in the figures, not "unfinished"."""
    from rotsweep.analysis import figures

    victim = run_ids(sweep)[0]
    (store.run_dir(sweep, victim) / store.STATUS_FILE).write_bytes(b'{"status": "do')
    assert invoke("gather", sweep).exit_code == 0
    runs = figures.load_runs(sweep)
    table = figures.summarize(runs, ["run_id"], figures.pick_metric(runs))
    states = dict(zip(table["run_id"], table["state"]))
    assert states.pop(victim) == "unreadable" and set(states.values()) == {"done"}

    result = invoke("plot", "all", sweep)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "gather skipped 1 file(s) of 1 run(s)" in notes[0]
    assert f"rotsweep gather {sweep}" in notes[0] and "Traceback" not in result.output
    (store.run_dir(sweep, victim) / store.STATUS_FILE).unlink()  # no status: a pending run, nothing skipped
    assert invoke("gather", sweep).exit_code == 0
    assert "note:" not in invoke("plot", "all", sweep).stderr


# --- B. A truncated checkpoint: one line, and the run starts over ---------------------------


def test_a_truncated_checkpoint_is_set_aside_and_the_run_starts_over(finished, tmp_path):
    original = store.run_dir(finished, run_ids(finished)[0])
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    checkpoint = run_dir / store.CHECKPOINT_FILE
    truncated = checkpoint.read_bytes()[:1000]
    checkpoint.write_bytes(truncated)
    store.write_status(run_dir, "preempted", step=12, total_steps=24)
    # What a SIGKILL during atomic writes leaves behind: the run cleans them when it starts.
    leftovers = [run_dir / f".{store.METRICS_FILE}.x1.tmp", run_dir / store.DYNAMICS_DIR / ".part-x.parquet.x2.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")

    result = invoke("train", "--out", run_dir, "--config", run_dir / store.CONFIG_FILE, "--no-progress")
    assert result.exit_code == 0, result.output
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "not a complete checkpoint" in warnings[0]
    assert "Traceback" not in result.output
    (aside,) = run_dir.glob(f"{store.CHECKPOINT_FILE}.unreadable-*")
    assert aside.read_bytes() == truncated  # kept for inspection
    assert store.read_status(run_dir)["status"] == "done"
    assert not any(path.exists() for path in leftovers)
    # Started over from step 0 with the same config: the metrics of the uninterrupted run, exactly.
    assert pq.read_table(run_dir / store.METRICS_FILE).equals(pq.read_table(original / store.METRICS_FILE))


# --- C. Choices, flags, help ----------------------------------------------------------------


def test_cli_choices_are_the_libraries_choices():
    assert [e.value for e in cli.Executor] == list(launch.EXECUTORS)
    assert [e.value for e in cli.Scale] == list(launch.SCALES)
    assert [e.value for e in cli.Optimizer] == list(theory.OPTIMIZERS)
    assert [e.value for e in cli.Metric] == list(figures.METRICS)


@pytest.mark.parametrize("args, choices", [
    (["launch", *SWEEP_ARGS[:-1], "lcoal", "--dry-run"], "'slurm', 'local'"),
    (["launch", "zero-shot", "--model", "resnet20", "--scale", "huge", "--dry-run"], "'paper', 'tiny'"),
    (["demo", "--executor", "slrum"], "'slurm', 'local'"),
    (["predict", "--optimizer", "adam", "--lr", "1", "--weight-decay", "1"], "'adamw', 'adam-l2', 'sgdm', 'lion'"),
    (["randomwalk", "--optimizer", "sdgm"], "'adamw', 'adam-l2', 'sgdm', 'lion'"),
    (["plot", "heatmap", "SWEEP", "--metric", "top1"], "'val_top1', 'val_loss', 'val_perplexity', 'train_loss'"),
    (["launch", *SWEEP_ARGS, "--dry-run", "true"], "unexpected extra argument"),
    (["lauch"], "No such command 'lauch'"),
])
def test_a_typo_in_a_choice_is_refused_naming_the_choices(finished, tmp_path, args, choices):
    args = [finished if a == "SWEEP" else a for a in args]
    assert_refused(tmp_path, args, choices)


def _commands():
    """(path, click command) of every command, plot's included."""
    root = typer.main.get_command(cli.app)
    stack = [((), root)]
    while stack:
        path, command = stack.pop()
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            stack.append(((*path, name), sub))


def test_every_option_has_help_and_flags_have_no_value():
    for path, command in _commands():
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"rotsweep {' '.join(path)} {param.opts[0]} has no help"
        text = invoke(*path, "--help").stdout
        assert "<bool>" not in text, f"rotsweep {' '.join(path)} --help shows a <bool> value"


@pytest.mark.parametrize("path", [["launch"], ["status"], ["gather"], ["plot"], ["predict"]])
def test_help_shows_examples(path):
    text = invoke(*path, "--help").stdout
    examples = text.split("Examples:")[1].strip().splitlines()
    assert examples and all(line.strip().startswith("rotsweep ") for line in examples)
    assert any(line.strip().startswith(f"rotsweep {path[0]}") for line in examples)


def test_the_catalog_names_every_figure_drawn_and_each_plot_command_says_what_it_draws():
    assert list(figures.FIGURES) == list(CATALOG)  # plot all and the report draw exactly the catalog's figures
    commands = {path[1]: command for path, command in _commands() if len(path) == 2 and path[0] == "plot"}
    for name, entry in CATALOG.items():
        command = commands.get(name) or commands[name.split("-")[0]]  # dynamics-neurons: plot dynamics --neurons
        assert entry.draws in command.help and entry.applies_to in command.help, name


def test_version_and_completion():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"rotsweep {__version__}"
    completion = runner.invoke(cli.app, ["--show-completion", "bash"], prog_name="rotsweep")
    assert completion.exit_code == 0 and "complete -o default -F _rotsweep_completion rotsweep" in completion.stdout


def test_predict_refuses_infinite_values_and_warns_above_pi(tmp_path):
    for flag in ("--lr", "--weight-decay"):
        args = {"--lr": "0.1", "--weight-decay": "0.1", flag: "inf"}
        assert_refused(tmp_path, ["predict", "--optimizer", "adamw", *[x for kv in args.items() for x in kv]], flag)
    # AdamW: η̂_r = sqrt(2ηλ(1−β1)/(1+β1)); η = λ = 10 gives sqrt(200·0.1/1.9) ≈ 3.24 rad > π.
    above = invoke("predict", "--optimizer", "adamw", "--lr", "10", "--weight-decay", "10", "--json")
    assert above.exit_code == 0
    assert json.loads(above.stdout)["eta_r"] == pytest.approx(math.sqrt(2 * 100 * 0.1 / 1.9))
    warning = above.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "above π" in warning[0]
    # η = λ = 3 gives sqrt(18·0.1/1.9) ≈ 0.97 rad: no π warning (ηλ = 9 still gets the momentum warning).
    below = invoke("predict", "--optimizer", "adamw", "--lr", "3", "--weight-decay", "3")
    assert below.exit_code == 0 and "above π" not in below.stderr
    quiet = invoke("predict", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.1")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_randomwalk_needs_enough_steps_to_measure_and_writes_strict_json(tmp_path):
    assert_refused(tmp_path, ["randomwalk", "--optimizer", "sgdm", "--steps", "39", "--out", tmp_path / "walk"],
                   "--steps must be between 40")
    assert_refused(tmp_path, ["randomwalk", "--steps", str(10**12), "--out", tmp_path / "walk"], "and 100,000,000")
    result = invoke("randomwalk", "--optimizer", "sgdm", "--steps", "40", "--out", tmp_path / "walk", "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = json.loads((tmp_path / "walk" / "randomwalk.json").read_text(), parse_constant=refuse)
    for key in ("eta_r_measured", "norm_measured", "eta_g_measured"):
        assert written[key] is not None and math.isfinite(written[key]) and written[key] > 0


def test_an_equivalent_relaunch_spelled_differently_is_the_same_sweep(finished, tmp_path):
    before = snapshot(finished)
    # The same overrides reordered, with spaces and a repeated key, and the default seed given explicitly.
    respelled = ["--set", "dynamics_interval = 6", "--set", "steps=7", "--set", "steps= 24", "--set",
                 "checkpoint_interval=12", "--set", "eval_interval=12", "--seeds", "0"]
    result = invoke("launch", *SWEEP_ARGS, "--out", finished, *respelled, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["to_submit"], report["already_done"]) == (0, RUNS)
    # A different sweep is still refused.
    assert_one_line_error(invoke("launch", *SWEEP_ARGS, "--out", finished, *FAST, "--seeds", "1", "--dry-run"),
                          "holds another sweep")
    assert snapshot(finished) == before


# --- D. Words that say what happened --------------------------------------------------------


def test_plot_all_names_the_command_to_run_and_its_exit_code_says_what_was_drawn(sweep, tmp_path):
    shutil.rmtree(sweep / "results")
    line = assert_refused(tmp_path, ["plot", "all", sweep], f"rotsweep gather {sweep}")
    assert "has not been gathered" in line
    run_dir = store.run_dir(sweep, run_ids(sweep)[0])
    line = assert_refused(tmp_path, ["plot", "all", run_dir], f"rotsweep gather {sweep}`, then `rotsweep plot all {sweep}")
    assert "is a run directory" in line
    assert_refused(tmp_path, ["plot", "all", tmp_path / "nothing-here"], "is not a directory")

    assert invoke("gather", sweep).exit_code == 0
    drawn = invoke("plot", "all", sweep)
    assert drawn.exit_code == 0, drawn.output
    assert (sweep / figures.FIGURES_DIR / "curves.png").is_file()

    # Gathered, but no finished run yet: nothing to draw is exit code 1, every figure says why.
    empty = tmp_path / "empty"
    shutil.copytree(sweep, empty, ignore=shutil.ignore_patterns("results", "figures"))
    for run_id in run_ids(empty):
        shutil.rmtree(store.run_dir(empty, run_id))
    assert invoke("gather", empty).exit_code == 0
    nothing = invoke("plot", "all", empty)
    assert nothing.exit_code == 1, nothing.output
    assert nothing.stdout.count("skipped") == len(figures.FIGURES) - 1  # all but the random walk
    assert not (empty / figures.FIGURES_DIR).exists()


def test_status_details_of_runs_that_never_started():
    # Never submitted, and a directory deleted after its job was submitted.
    assert run_state({"status": "pending"}, None, has_config=False).detail == "not submitted"
    gone = run_state({"status": "pending"}, "COMPLETED", has_config=False, job_id="41")
    assert (gone.state, gone.detail) == ("pending", "its directory is gone since job 41")
    # A SLURM array task cancelled while pending has no accounting record of its own.
    cancelled = run_state({"status": "pending"}, None, job_id="57_3")
    assert cancelled.state == "pending" and "job 57_3 ended before the run started" in cancelled.detail
    # A local job that ended (killed, or failed on an earlier run of its pack) before reaching this run.
    unstarted = run_state({"status": "pending"}, "COMPLETED", job_id="123")
    assert (unstarted.state, unstarted.detail) == ("pending", "job COMPLETED before the run started")
    for state in (cancelled, unstarted, gone):
        assert should_submit(state, rerun_failed=False)
    # A run that started and then lost its job is still a crash.
    assert run_state({"status": "running"}, "COMPLETED").state == "failed"


def test_dry_run_counts_local_jobs_as_launch_makes_them_and_shows_no_slurm_resources(finished, tmp_path):
    # The fixture's launch made 3 jobs of 6 runs with --max-parallel 4; a dry run of the same must say 3.
    fresh = invoke("launch", *SWEEP_ARGS, "--out", tmp_path / "new", "--max-parallel", "4", *FAST, "--dry-run",
                   "--json")
    report = json.loads(fresh.stdout)
    assert (report["jobs"], report["runs_per_job"], report["to_submit"]) == (3, 2, RUNS)
    assert report["profile"] is None and "sbatch_header" not in report
    text = invoke("launch", *SWEEP_ARGS, "--out", tmp_path / "new", "--max-parallel", "4", *FAST, "--dry-run").stdout
    assert "local jobs: 3" in text and "resources per job" not in text and "partition" not in text
    assert len(store.read_manifest(finished)["launches"][0]["submitted"]) == RUNS
    assert len({job["job_id"] for job in store.read_manifest(finished)["jobs"].values()}) == 3


def test_random_walk_panels_have_distinct_titles(tmp_path):
    for seed in (0, 1):
        assert invoke("randomwalk", "--optimizer", "sgdm", "--steps", "40", "--seed", seed,
                      "--out", tmp_path / f"sgdm-seed{seed}").exit_code == 0
    fig = figures.draw_randomwalk(figures.read_randomwalks(tmp_path))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 2 and len(set(titles)) == 2, titles



@pytest.mark.slurm
@needs_slurm
def test_status_of_an_array_task_cancelled_while_pending(tmp_path):
    import subprocess
    import time

    sweep = tmp_path / "sweep"
    result = invoke("launch", "zero-shot", "--model", "resnet20", "--scale", "tiny", "--executor", "slurm",
                    "--profile", "local", "--out", sweep, "--set", "steps=100000", "--set", "eval_interval=1000",
                    "--max-parallel", "1", "--json")
    assert result.exit_code == 0, result.output
    try:
        jobs = store.read_manifest(sweep)["jobs"]
        victim, job = max(jobs.items(), key=lambda item: int(item[1]["job_id"].split("_")[-1]))  # still pending
        job_id = job["job_id"]
        subprocess.run(["scancel", job_id], check=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            run = next(run for run in launch.sweep_status(sweep).to_dict()["runs"] if run["run_id"] == victim)
            if run["state"] != "queued":
                break
            time.sleep(1)
        assert run["state"] in ("pending", "cancelled"), run
        assert run["detail"] != "not submitted" and (job_id in run["detail"] or "cancelled" in run["detail"]), run
    finally:
        invoke("cancel", sweep)
