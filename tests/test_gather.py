"""rotsweep.analysis.gather on real run directories: values against hand computations,
statuses, corrupt files, incremental re-gathering, concurrent writers, schema and readers."""

import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from rotsweep import store
from rotsweep.analysis.gather import (
    CACHE_FILE, SCHEMA_VERSION, SCHEMA_VERSION_KEY, TABLES, gather, output_paths, read_results,
)
from rotsweep.config import RunConfig
from rotsweep.errors import UserError

# --- Building run directories the way rotsweep.train writes them ---------------------------

WEIGHTS = {"conv.weight": 1.0, "fc.weight": 3.0}  # each layer's rotation scale
NEURON_FACTORS = np.array([0.5, 1.0, 2.0, 4.0])  # sampled neurons rotate at these multiples
NORMS = {"conv.weight": 2.0, "fc.weight": 5.0}


def layer_rotation(param, step):
    """The constructed mean angular update of a layer at a step (varies, so the window matters)."""
    return 1e-3 * WEIGHTS[param] * (1 + step / 100)


def dynamics_frame(steps, version=0.0):
    """Rows like a DynamicsRecorder's: the rows gather uses, and others it must ignore."""
    rows = []
    for step in steps:
        for param in WEIGHTS:
            rotation = layer_rotation(param, step)
            rows += [
                (step, param, "angular_update", "mean", -1, rotation),
                (step, param, "angular_update", "layer", -1, 7.0),
                (step, param, "angular_update", "std", -1, 9.0),
                (step, param, "norm", "mean", -1, NORMS[param] + version),
                (step, param, "norm", "layer", -1, 100.0),
                (step, param, "rms_update", "mean", -1, 0.5),
            ]
            rows += [(step, param, "angular_update", "sample", n, rotation * f) for n, f in enumerate(NEURON_FACTORS)]
            rows += [(step, param, "norm", "sample", n, 50.0) for n in range(len(NEURON_FACTORS))]
        rows.append((step, "fc.bias", "rms_update", "layer", -1, 0.01))
    frame = pd.DataFrame(rows, columns=["step", "param", "stat", "reduction", "neuron", "value"])
    return frame.astype({"param": str, "stat": str, "reduction": str})


def metrics_frame(rows):
    frame = pd.DataFrame(rows, columns=["step", "epoch", "split", "metric", "value"])
    types = {"step": "int64", "epoch": "float64", "split": "string", "metric": "string", "value": "float64"}
    return frame.astype(types)  # as rotsweep.train.metrics_frame


def image_metrics(steps_per_epoch=100, last=100, diverged=False):
    rows = [(s, s / steps_per_epoch, "train", "loss", 2.0 - s / 100) for s in range(10, last + 1, 10)]
    for s, loss, top1 in ((50, 1.2, 60.0), (100, 1.4, 70.0))[: 1 if last < 100 else 2]:
        rows += [(s, s / steps_per_epoch, "val", "loss", loss), (s, s / steps_per_epoch, "val", "top1", top1)]
    if diverged:
        rows.append((last, last / steps_per_epoch, "train", "loss", float("nan")))
    return metrics_frame(rows)


def write_part(run_dir, steps, version=0.0):
    name = f"part-{steps[0]:09d}-{steps[-1]:09d}.parquet"
    store.write_parquet(run_dir / store.DYNAMICS_DIR / name, dynamics_frame(steps, version))


def write_run(sweep, config, status=None, metrics=None, parts=(), **status_fields):
    run_dir = store.run_dir(sweep, config.run_id)
    store.write_text(run_dir / store.CONFIG_FILE, config.canonical_json() + "\n")
    if status:
        store.write_status(run_dir, status, **status_fields)
    if metrics is not None:
        store.write_parquet(run_dir / store.METRICS_FILE, metrics)
    for steps in parts:
        write_part(run_dir, list(steps))
    return config.run_id


def make_manifest(sweep, run_ids):
    store.write_manifest(sweep, {"experiment": "test-exp", "model": "resnet20", "scale": "tiny", "runs": run_ids})


ADAMW = RunConfig(optimizer="adamw", steps=100, lr=0.01, weight_decay=0.1, beta1=0.8, schedule="constant")
SGDM_WARMUP = RunConfig(optimizer="sgdm", epochs=1.0, lr=0.1, weight_decay=5e-4, momentum=0.9,
                        schedule="cosine", warmup_epochs=0.5, warmup_start_lr=1e-4)
LION = RunConfig(optimizer="lion", steps=100, lr=1e-4, weight_decay=1.0, beta1=0.9, beta2=0.99,
                 model_options={"pre_activation": False, "dropout": 0.1})
ADAM_L2 = RunConfig(optimizer="adam-l2", steps=100, lr=1e-3, weight_decay=5e-4)
RV_ADAM_L2 = ADAM_L2.replace(rotational=True, rv_eta_r_from="adamw")
DIVERGED = ADAMW.replace(lr=10.0)
PENDING = ADAMW.replace(seed=7)
STRAY = ADAMW.replace(seed=8)


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "my-sweep"
    all_steps = range(0, 100, 10)
    write_run(sweep, ADAMW, "done", image_metrics(), [all_steps[:5], all_steps[5:]], step=100, total_steps=100,
              wall_s=12.5)
    # Unfinished: 60 of 100 steps; total_steps from status.json, steps per epoch from the curves.
    write_run(sweep, SGDM_WARMUP, "running", image_metrics(last=60), [range(0, 70, 10)], step=60, total_steps=100)
    write_run(sweep, LION, "done", image_metrics(), [all_steps], step=100, total_steps=100)
    write_run(sweep, ADAM_L2, "failed", image_metrics(last=20), [], step=20, total_steps=100,
              error="RuntimeError: boom")
    write_run(sweep, RV_ADAM_L2, "done", image_metrics(), [all_steps], step=100, total_steps=100)
    write_run(sweep, DIVERGED, "diverged", image_metrics(last=60, diverged=True), [range(0, 60, 10)],
              step=60, total_steps=100)
    write_run(sweep, STRAY, "done", image_metrics(), [], step=100, total_steps=100)  # not in the manifest
    make_manifest(sweep, [c.run_id for c in (ADAMW, SGDM_WARMUP, LION, ADAM_L2, RV_ADAM_L2, DIVERGED, PENDING)])
    return sweep


def runs_by_id(sweep):
    return pd.read_parquet(output_paths(sweep)["runs"]).set_index("run_id")


# --- Values ----------------------------------------------------------------------------------


def test_rows_statuses_and_metrics(sweep):
    report = gather(sweep)
    assert report.problems == [] and report.read == 8 and report.missing == 1 and report.written
    runs = runs_by_id(sweep)
    assert len(runs) == 8
    status = runs["status"].to_dict()
    assert status[ADAMW.run_id] == "done" and status[SGDM_WARMUP.run_id] == "running"
    assert status[ADAM_L2.run_id] == "failed" and status[DIVERGED.run_id] == "diverged"
    assert status[PENDING.run_id] == "pending"  # in the manifest, no directory
    assert runs.loc[ADAM_L2.run_id, "error"] == "RuntimeError: boom"
    assert not runs.loc[STRAY.run_id, "in_manifest"] and runs.loc[ADAMW.run_id, "in_manifest"]
    assert set(runs["sweep"]) == {"my-sweep"} and set(runs["experiment"]) == {"test-exp"}
    assert pd.isna(runs.loc[PENDING.run_id, "optimizer"]) and runs.loc[PENDING.run_id, "steps_done"] == 0

    done = runs.loc[ADAMW.run_id]
    assert (done["optimizer"], done["lr"], done["weight_decay"], done["beta1"]) == ("adamw", 0.01, 0.1, 0.8)
    assert done["eta_lambda"] == pytest.approx(0.001) and done["model_options"] == "{}"
    assert runs.loc[LION.run_id, "model_options"] == '{"dropout":0.1,"pre_activation":false}'  # canonical JSON
    assert (done["steps_done"], done["total_steps"], done["wall_s"]) == (100, 100, 12.5)
    # val loss 1.2 at step 50, 1.4 at 100: final 1.4, best 1.2; top1 60 then 70; train loss ends at 2 − 1.
    assert (done["final_val_loss"], done["best_val_loss"]) == (1.4, 1.2)
    assert (done["final_val_top1"], done["best_val_top1"]) == (70.0, 70.0)
    assert done["final_train_loss"] == pytest.approx(1.0) and math.isnan(done["final_val_perplexity"])
    unfinished = runs.loc[SGDM_WARMUP.run_id]
    assert (unfinished["final_val_loss"], unfinished["steps_done"], unfinished["total_steps"]) == (1.2, 60, 100)
    diverged = runs.loc[DIVERGED.run_id]
    assert math.isnan(diverged["final_train_loss"]) and diverged["best_val_loss"] == 1.2

    curves = pd.read_parquet(output_paths(sweep)["curves"])
    assert len(curves[curves.run_id == ADAMW.run_id]) == len(image_metrics())
    dynamics = pd.read_parquet(output_paths(sweep)["dynamics"])
    assert len(dynamics[dynamics.run_id == ADAMW.run_id]) == len(dynamics_frame(range(0, 100, 10)))


def test_predictions_against_table_1(sweep):
    gather(sweep)
    runs = runs_by_id(sweep)
    # AdamW, η=0.01, λ=0.1, β1=0.8: η̂_r = sqrt(2ηλ(1−β1)/(1+β1)), η̂_g = η·sqrt((1−β1)/(1+β1)),
    # ‖ω̂‖ = sqrt(η/(2λ)).
    adamw = runs.loc[ADAMW.run_id]
    assert adamw["eta_r_hat"] == pytest.approx(math.sqrt(2 * 0.001 * 0.2 / 1.8))
    assert adamw["eta_g_hat"] == pytest.approx(0.01 * math.sqrt(0.2 / 1.8))
    assert adamw["norm_hat"] == pytest.approx(math.sqrt(0.01 / 0.2))
    # SGDM, η=0.1, λ=5e-4, α=0.9: η̂_r = sqrt(2ηλ/(1+α)); η̂_g and ‖ω̂‖ need gradient statistics.
    sgdm = runs.loc[SGDM_WARMUP.run_id]
    assert sgdm["eta_r_hat"] == pytest.approx(math.sqrt(2 * 0.1 * 5e-4 / 1.9))
    assert math.isnan(sgdm["eta_g_hat"]) and math.isnan(sgdm["norm_hat"])
    # Lion, η=1e-4, λ=1, β=(0.9, 0.99): K = 0.01 + 0.81·0.01/1.99, η̂_r = sqrt(πηλK), η̂_g = η,
    # ‖ω̂‖ = sqrt(η/(πKλ)).
    k = 0.1**2 + 0.9**2 * 0.01 / 1.99
    lion = runs.loc[LION.run_id]
    assert lion["eta_r_hat"] == pytest.approx(math.sqrt(math.pi * 1e-4 * k))
    assert lion["eta_g_hat"] == pytest.approx(1e-4)
    assert lion["norm_hat"] == pytest.approx(math.sqrt(1e-4 / (math.pi * k)))
    # Adam+ℓ2 needs gradient statistics for η̂_r; its RV with AdamW's rotation uses AdamW's formula (β1 = 0.9).
    adam_l2, rv = runs.loc[ADAM_L2.run_id], runs.loc[RV_ADAM_L2.run_id]
    assert math.isnan(adam_l2["eta_r_hat"]) and math.isnan(adam_l2["norm_hat"])
    assert adam_l2["eta_g_hat"] == pytest.approx(1e-3 * math.sqrt(0.1 / 1.9))
    assert rv["eta_r_hat"] == pytest.approx(math.sqrt(2 * 1e-3 * 5e-4 * 0.1 / 1.9))
    assert math.isnan(rv["norm_hat"])  # Algorithm 1 keeps the initial norms


def test_layers_and_imbalance_by_hand(sweep):
    gather(sweep)
    layers = pd.read_parquet(output_paths(sweep)["layers"]).set_index(["run_id", "param"])
    runs = runs_by_id(sweep)
    window = [30, 40, 50, 60, 70]  # recorded every 10 steps; [25%, 75%] of 100 steps
    eta = {param: np.mean([layer_rotation(param, s) for s in window]) for param in WEIGHTS}

    row = layers.loc[(ADAMW.run_id, "conv.weight")]
    assert (row["window_start"], row["window_end"], row["window_steps"]) == (25, 75, 5)
    assert row["eta_r"] == pytest.approx(eta["conv.weight"])
    assert row["norm"] == pytest.approx(NORMS["conv.weight"])
    # Constant schedule: the prediction is η̂_r at every step.
    assert row["eta_r_predicted"] == pytest.approx(runs.loc[ADAMW.run_id, "eta_r_hat"])
    assert row["eta_r_ratio"] == pytest.approx(eta["conv.weight"] / row["eta_r_predicted"])
    # Neurons rotate at fixed multiples of their layer: the spread of their logs is that of the factors.
    assert row["imbalance_neurons"] == pytest.approx(np.std(np.log(NEURON_FACTORS)))
    assert set(layers.loc[ADAMW.run_id].index) == set(WEIGHTS)  # the bias has no rotation

    adamw = runs.loc[ADAMW.run_id]
    assert adamw["eta_r_measured"] == pytest.approx(np.mean(list(eta.values())))
    assert adamw["imbalance_layers"] == pytest.approx(abs(math.log(eta["fc.weight"] / eta["conv.weight"])) / 2)
    assert adamw["imbalance_neurons"] == pytest.approx(np.std(np.log(NEURON_FACTORS)))

    # SGDM with a 50-step warmup (0.5 epochs of 100 steps, read from the curves) then cosine,
    # 60 of 100 steps done: the window so far is steps 30..60.
    steps = np.array([30, 40, 50, 60])
    lr = np.where(steps < 50, 1e-4 + (0.1 - 1e-4) * steps / 50, 0.1 * (1 + np.cos(np.pi * steps / 100)) / 2)
    predicted = np.sqrt(2 * lr * 5e-4 / 1.9).mean()
    row = layers.loc[(SGDM_WARMUP.run_id, "fc.weight")]
    assert row["window_steps"] == 4 and row["eta_r_predicted"] == pytest.approx(predicted)
    assert row["eta_r"] == pytest.approx(np.mean([layer_rotation("fc.weight", s) for s in steps]))

    # Without dynamics (failed at step 20, or none recorded): NaN.
    for run_id in (ADAM_L2.run_id, STRAY.run_id, PENDING.run_id):
        assert runs.loc[run_id, ["eta_r_measured", "imbalance_layers", "imbalance_neurons"]].isna().all()
    # The RV of Adam+ℓ2 with AdamW's rotation has a prediction to compare with.
    assert math.isfinite(layers.loc[(RV_ADAM_L2.run_id, "conv.weight"), "eta_r_ratio"])


def test_layers_that_did_not_move_are_left_out_of_the_logs(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, ADAMW, "done", image_metrics(), [range(0, 100, 10)], step=100, total_steps=100)
    part = next((store.run_dir(sweep, ADAMW.run_id) / store.DYNAMICS_DIR).iterdir())
    frame = pd.read_parquet(part)
    frame.loc[(frame.param == "conv.weight") & (frame.stat == "angular_update"), "value"] = 0.0
    store.write_parquet(part, frame)
    gather(sweep)
    run = runs_by_id(sweep).loc[ADAMW.run_id]
    assert run["imbalance_layers"] == 0.0  # one moving layer left
    fc = np.mean([layer_rotation("fc.weight", s) for s in range(30, 80, 10)])
    assert run["eta_r_measured"] == pytest.approx(fc / 2)  # the mean still counts the layer at 0


def test_a_real_recorder_part_is_gathered(tmp_path):
    torch = pytest.importorskip("torch")
    from rotsweep.dynamics import DynamicsRecorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    recorder = DynamicsRecorder(model.named_parameters(), interval=2, sample_neurons=3)
    for step in range(20):
        model(torch.randn(16, 8)).square().mean().backward()
        recorder.before_step(step)
        optimizer.step()
        recorder.after_step(step)
        optimizer.zero_grad()
    config = RunConfig(steps=20, lr=1e-2, weight_decay=0.1, schedule="constant")
    sweep = tmp_path / "sweep"
    write_run(sweep, config, "done", image_metrics(last=20), step=20, total_steps=20)
    recorded = recorder.drain()
    store.write_parquet(store.run_dir(sweep, config.run_id) / store.DYNAMICS_DIR / "part-000000000-000000018.parquet",
                        recorded)
    assert gather(sweep).problems == []
    layers = pd.read_parquet(output_paths(sweep)["layers"]).set_index("param")
    assert sorted(layers.index) == ["0.weight", "2.weight"]
    assert (layers.window_steps == 5).all()  # steps 6, 8, ..., 14 of [5, 15]
    # The layer values are the recorder's own per-layer means over the window.
    window = recorded[(recorded.step >= 5) & (recorded.step <= 15) & (recorded.reduction == "mean")]
    for param in layers.index:
        mine = window[window.param == param]
        assert layers.loc[param, "eta_r"] == pytest.approx(mine[mine.stat == "angular_update"].value.mean(), rel=1e-12)
        assert layers.loc[param, "norm"] == pytest.approx(mine[mine.stat == "norm"].value.mean(), rel=1e-12)
        assert layers.loc[param, "eta_r"] > 0


# --- Corrupt files -----------------------------------------------------------------------------


def test_corrupt_files_are_reported_and_skipped(sweep):
    gather(sweep)
    clean = runs_by_id(sweep)
    clean_curves = pd.read_parquet(output_paths(sweep)["curves"])
    adamw_dir, lion_dir = store.run_dir(sweep, ADAMW.run_id), store.run_dir(sweep, LION.run_id)
    sgdm_dir, stray_dir = store.run_dir(sweep, SGDM_WARMUP.run_id), store.run_dir(sweep, STRAY.run_id)
    metrics = adamw_dir / store.METRICS_FILE
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])  # truncated Parquet
    (lion_dir / store.CONFIG_FILE).write_text('{"optimizer": "lion", "lr": ')  # half-written JSON
    (stray_dir / store.STATUS_FILE).write_text('{"status": "done", "step": "many"}')  # wrong type
    part = sorted((sgdm_dir / store.DYNAMICS_DIR).iterdir())[0]
    store.write_parquet(part, pd.DataFrame({"step": [1], "value": [0.5]}))  # wrong columns

    report = gather(sweep)
    problems = {(p.run_id, p.file): p.reason for p in report.problems}
    assert set(problems) == {
        (ADAMW.run_id, "metrics.parquet"), (LION.run_id, "config.json"), (STRAY.run_id, "status.json"),
        (SGDM_WARMUP.run_id, f"dynamics.parquet/{part.name}"),
    }
    assert "Parquet" in problems[(ADAMW.run_id, "metrics.parquet")]
    assert "JSONDecodeError" in problems[(LION.run_id, "config.json")]
    reason = problems[(SGDM_WARMUP.run_id, f"dynamics.parquet/{part.name}")]
    assert "missing column(s) param, stat, reduction, neuron" in reason
    assert report.skipped == 4 and report.to_dict()["problems"][0].keys() == {"run_id", "file", "reason"}
    assert "4 file(s) skipped" in report.format()

    runs = runs_by_id(sweep)
    assert len(runs) == 8
    # Every run keeps a row with what could be read.
    assert math.isnan(runs.loc[ADAMW.run_id, "final_val_loss"]) and runs.loc[ADAMW.run_id, "status"] == "done"
    assert runs.loc[ADAMW.run_id, "eta_r_measured"] == clean.loc[ADAMW.run_id, "eta_r_measured"]
    assert pd.isna(runs.loc[LION.run_id, "optimizer"]) and runs.loc[LION.run_id, "final_val_loss"] == 1.4
    assert runs.loc[LION.run_id, "eta_r_measured"] == clean.loc[LION.run_id, "eta_r_measured"]  # window from status
    assert math.isnan(runs.loc[LION.run_id, "eta_r_hat"])
    assert pd.isna(runs.loc[STRAY.run_id, "status"]) and runs.loc[STRAY.run_id, "optimizer"] == "adamw"
    assert runs.loc[SGDM_WARMUP.run_id, "status"] == "running"
    # The other runs are untouched.
    others = [DIVERGED.run_id, RV_ADAM_L2.run_id, ADAM_L2.run_id, PENDING.run_id]
    pd.testing.assert_frame_equal(runs.loc[others], clean.loc[others], check_dtype=False)  # nulls: int -> float
    curves = pd.read_parquet(output_paths(sweep)["curves"])
    assert ADAMW.run_id not in set(curves.run_id)
    assert len(curves) == len(clean_curves) - (clean_curves.run_id == ADAMW.run_id).sum()

    # Problems of unchanged runs are reported again; a repaired file clears its problem.
    again = gather(sweep)
    assert again.read == 0 and again.problems == report.problems
    store.write_text(lion_dir / store.CONFIG_FILE, LION.canonical_json() + "\n")
    repaired = gather(sweep)
    assert repaired.read == 1 and (LION.run_id, "config.json") not in {(p.run_id, p.file) for p in repaired.problems}
    assert runs_by_id(sweep).loc[LION.run_id, "optimizer"] == "lion"


def test_a_bad_manifest_is_reported_and_the_run_directories_still_gathered(sweep):
    (sweep / store.MANIFEST_FILE).write_text("{not json")
    report = gather(sweep)
    assert [(p.run_id, p.file) for p in report.problems] == [(None, "manifest.json")]
    runs = runs_by_id(sweep)
    assert len(runs) == 7 and not runs["in_manifest"].any()  # the pending run had only the manifest


def test_not_a_sweep_directory(tmp_path):
    with pytest.raises(UserError, match="not a sweep directory"):
        gather(tmp_path / "nowhere")


# --- Incremental ----------------------------------------------------------------------------------


def mtimes(sweep):
    results = sweep / "results"
    return {path.name: path.stat().st_mtime_ns for path in results.iterdir()}


def test_regathering_reads_only_what_changed(sweep):
    first = gather(sweep)
    assert first.read == 8 and (sweep / "results" / CACHE_FILE).exists()
    before = mtimes(sweep)
    time.sleep(0.01)
    second = gather(sweep)
    assert (second.read, second.unchanged, second.written) == (0, 8, False)
    assert mtimes(sweep) == before  # nothing rewritten, not even the cache
    assert "nothing changed" in second.format()

    # Touch one run: only it is read, and the tables are those of a full gather.
    status = store.run_dir(sweep, LION.run_id) / store.STATUS_FILE
    os.utime(status, ns=(time.time_ns(), time.time_ns()))
    third = gather(sweep)
    assert (third.read, third.unchanged, third.written) == (1, 7, True)

    # A run that changes its files (more dynamics, new status) and a run that disappears.
    adamw_dir = store.run_dir(sweep, SGDM_WARMUP.run_id)
    write_part(adamw_dir, list(range(70, 100, 10)))
    store.write_status(adamw_dir, "done", step=100, total_steps=100)
    shutil.rmtree(store.run_dir(sweep, STRAY.run_id))
    fourth = gather(sweep)
    assert (fourth.read, fourth.runs) == (1, 7)
    assert runs_by_id(sweep).loc[SGDM_WARMUP.run_id, "status"] == "done"
    incremental = {name: pd.read_parquet(path) for name, path in output_paths(sweep).items()}
    full = gather(sweep, full=True)
    assert full.read == 7
    for name, path in output_paths(sweep).items():  # the same rows in the same order: runs in run_id order
        assert incremental[name].run_id.is_monotonic_increasing
        pd.testing.assert_frame_equal(incremental[name], pd.read_parquet(path))


def test_a_run_added_to_the_manifest_is_read_again(sweep):
    gather(sweep)
    manifest = store.read_manifest(sweep)
    store.write_manifest(sweep, {**manifest, "runs": manifest["runs"] + [STRAY.run_id]})
    report = gather(sweep)
    assert report.read == 1 and runs_by_id(sweep).loc[STRAY.run_id, "in_manifest"]


def test_edited_outputs_make_a_full_gather(sweep):
    gather(sweep)
    runs_path = output_paths(sweep)["runs"]
    runs_path.unlink()
    report = gather(sweep)
    assert report.read == 8 and runs_path.exists()


# --- Concurrent writers ---------------------------------------------------------------------------


def test_gathering_while_a_run_is_rewritten(sweep):
    """A writer thread rewrites one run as a resuming job does, while gather runs again and again."""
    run_dir = store.run_dir(sweep, ADAMW.run_id)
    for part in (run_dir / store.DYNAMICS_DIR).iterdir():
        part.unlink()
    for step in range(0, 100, 10):  # one part per recorded step: many files to list and lose
        write_part(run_dir, [step])
    write_version_metrics(run_dir, 0)
    gather(sweep)
    baseline = runs_by_id(sweep)
    stop = threading.Event()
    versions = []

    def writer():
        version = 0
        while not stop.is_set():
            version += 1
            # Resume from the checkpoint at step 50: drop the later parts, rewrite the metrics,
            # record the later steps again.
            for step in range(50, 100, 10):
                (run_dir / store.DYNAMICS_DIR / f"part-{step:09d}-{step:09d}.parquet").unlink(missing_ok=True)
            write_version_metrics(run_dir, version)
            store.write_status(run_dir, "running", step=50, total_steps=100)
            for step in range(50, 100, 10):
                write_part(run_dir, [step], version=version)
            store.write_status(run_dir, "done", step=100, total_steps=100)
            versions.append(version)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reads = 0
        for _ in range(15):
            report = gather(sweep)
            assert report.problems == []  # a vanished part is not a problem
            reads += report.read
            check_consistent(sweep, baseline)
    finally:
        stop.set()
        thread.join()
    assert len(versions) > 15 and reads >= 5  # the writer really ran alongside
    gather(sweep)
    check_consistent(sweep, baseline)


def write_version_metrics(run_dir, version):
    """Val losses version + step/1000: a whole file has one integer part."""
    rows = [(s, s / 100, "val", "loss", version + s / 1000) for s in range(10, 101, 10)]
    store.write_parquet(run_dir / store.METRICS_FILE, metrics_frame(rows))


def check_consistent(sweep, baseline):
    """The tables agree with each other and hold whole files of one moment of the run."""
    runs = runs_by_id(sweep)
    assert sorted(runs.index) == sorted(baseline.index)
    others = [run_id for run_id in baseline.index if run_id != ADAMW.run_id]
    pd.testing.assert_frame_equal(runs.loc[others], baseline.loc[others])
    curves = pd.read_parquet(output_paths(sweep)["curves"])
    mine = curves[curves.run_id == ADAMW.run_id]
    assert set(mine.metric) == {"loss"} and mine.value.floordiv(1).nunique() == 1  # one metrics file, whole
    assert runs.loc[ADAMW.run_id, "final_val_loss"] == mine[mine.step == 100].value.item()
    dynamics = pd.read_parquet(output_paths(sweep)["dynamics"])
    mine = dynamics[dynamics.run_id == ADAMW.run_id]
    assert not mine.duplicated(["step", "param", "stat", "reduction", "neuron"]).any()
    per_step = mine.groupby("step").size()
    assert (per_step == per_step.iloc[0]).all() and list(per_step.index[:5]) == [0, 10, 20, 30, 40]
    layers = pd.read_parquet(output_paths(sweep)["layers"])
    conv = layers[(layers.run_id == ADAMW.run_id) & (layers.param == "conv.weight")]
    window = mine[(mine.param == "conv.weight") & (mine.stat == "angular_update") & (mine.reduction == "mean")
                  & mine.step.between(25, 75)]
    assert conv.eta_r.item() == pytest.approx(window.value.mean())
    norms = mine[(mine.param == "conv.weight") & (mine.stat == "norm") & (mine.reduction == "mean")
                 & mine.step.between(25, 75)]
    assert conv.norm.item() == pytest.approx(norms.value.mean())


# --- Schema and readers ---------------------------------------------------------------------------


def schema_of(path):
    """An output's schema: of the file, or of each file of dynamics.parquet/ (all alike)."""
    if not path.is_dir():
        return pq.read_schema(path)
    schemas = [pq.read_schema(file) for file in sorted(path.glob("*.parquet"))]
    assert schemas and all(schema.equals(schemas[0], check_metadata=True) for schema in schemas)
    return schemas[0]


def rows_in(path):
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return sum(pq.read_metadata(file).num_rows for file in files)


def test_fixed_schema_with_version(sweep):
    gather(sweep)
    for name, path in output_paths(sweep).items():
        schema = schema_of(path)
        assert schema.remove_metadata().equals(TABLES[name]), name
        assert schema.metadata[SCHEMA_VERSION_KEY] == str(SCHEMA_VERSION).encode()
    runs = read_results(sweep, "runs")
    fields = RunConfig.__dataclass_fields__
    assert set(fields) <= set(runs.columns)
    assert runs["lr"].dtype == "float64" and set(runs["rotational"]) == {False, True, None}  # None: pending
    assert runs["steps_done"].dtype == "int64" and runs["eta_r_hat"].dtype == "float64"
    curves = read_results(sweep, "curves")
    assert curves.dtypes[["step", "epoch", "value"]].tolist() == ["int64", "float64", "float64"]
    dynamics = read_results(sweep, "dynamics")
    assert dynamics["neuron"].dtype == "int64"
    # Even a sweep without any run has the same columns and types.
    empty = sweep.parent / "empty"
    make_manifest(empty, [])
    gather(empty)
    for name, path in output_paths(empty).items():
        if name == "dynamics":  # a directory without files: its readers still give the columns
            assert list(read_results(empty, name).columns) == TABLES[name].names
        else:
            assert pq.read_schema(path).remove_metadata().equals(TABLES[name])


def test_read_results_refuses_another_schema_version(sweep):
    gather(sweep)
    path = output_paths(sweep)["layers"]
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"0"}), path)
    with pytest.raises(UserError, match="schema version 0"):
        read_results(sweep, "layers")
    with pytest.raises(UserError, match="rotsweep gather"):
        read_results(sweep.parent / "other", "runs")


def test_duckdb_reads_the_files_as_they_are(sweep):
    duckdb = pytest.importorskip("duckdb")  # in the test extra
    gather(sweep)
    paths = {name: str(path) for name, path in output_paths(sweep).items()}
    for name, path in paths.items():
        count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        assert count == rows_in(Path(path)), name
    rows = duckdb.sql(
        f"SELECT r.optimizer, avg(l.eta_r) / any_value(r.eta_r_measured) FROM read_parquet('{paths['layers']}') l "
        f"JOIN read_parquet('{paths['runs']}') r USING (run_id) WHERE r.run_id = '{ADAMW.run_id}' GROUP BY 1"
    ).fetchall()
    assert rows[0][0] == "adamw" and rows[0][1] == pytest.approx(1.0)
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{paths['dynamics']}')").fetchall()
    types = {row[0]: row[1] for row in described}
    assert types == {"run_id": "VARCHAR", "step": "BIGINT", "param": "VARCHAR", "stat": "VARCHAR",
                     "reduction": "VARCHAR", "neuron": "BIGINT", "value": "DOUBLE"}
