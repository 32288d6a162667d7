"""rotsweep export: TensorBoard event files, W&B offline runs and CSV, read back with the
libraries' own readers and compared with the gathered Parquet."""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotsweep import store, theory, train
from rotsweep.analysis import export, gather
from rotsweep.errors import UserError
from rotsweep.presets import preset
from rotsweep.schedule import learning_rate

ROTSWEEP = [sys.executable, "-m", "rotsweep.cli"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A small real sweep: AdamW and RV-AdamW on the tiny ResNet-20, trained and gathered."""
    directory = tmp_path_factory.mktemp("export") / "sweep"
    for rotational in (False, True):
        config = preset("tiny-resnet20-adamw", steps=40, eval_interval=10, checkpoint_interval=20,
                        dynamics_interval=5, rotational=rotational)
        assert train.run(config, store.run_dir(directory, config.run_id)) == "done"
    assert not gather.gather(directory).problems
    return directory


def results(sweep):
    runs = gather.read_results(sweep, "runs")
    return runs, gather.read_results(sweep, "curves"), gather.read_results(sweep, "layers")


def predicted_rotation(run, steps):
    """Table 1's η̂_r for AdamW, sqrt(2ηλ(1−β1)/(1+β1)), at each step's scheduled lr."""
    config = preset("tiny-resnet20-adamw", steps=40)
    lrs = np.array([learning_rate(config, int(s), int(run["total_steps"]), int(run["warmup_total_steps"]))
                    for s in steps])
    return np.sqrt(2 * lrs * run["weight_decay"] * (1 - run["beta1"]) / (1 + run["beta1"]))


# --- TensorBoard -------------------------------------------------------------------------------


def test_tensorboard_scalars_and_hparams_read_back_equal_to_the_parquet(sweep, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "tb"
    report = export.export(sweep, "tensorboard", out)
    runs, curves, layers = results(sweep)
    assert report.runs == 2 and sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(runs["run_id"])
    for _, run in runs.iterrows():
        events = EventAccumulator(str(out / run["run_id"]), size_guidance={"scalars": 0})
        events.Reload()
        tags = set(events.Tags()["scalars"])

        def scalars(tag):
            points = events.Scalars(tag)
            return [p.step for p in points], np.array([p.value for p in points])

        # Every curve (TensorBoard stores float32).
        own = curves[curves["run_id"] == run["run_id"]]
        for (split, metric), rows in own.groupby(["split", "metric"]):
            steps, values = scalars(f"{split}/{metric}")
            assert steps == rows["step"].tolist()
            np.testing.assert_allclose(values, rows["value"].to_numpy(), rtol=1e-6)
        # Per-layer rotation and norm per recorded step, and the prediction along the schedule.
        dynamics = gather.read_dynamics(sweep, [run["run_id"]], pairs=[("angular_update", "mean"), ("norm", "mean")])
        params = sorted(dynamics["param"].unique())
        assert len(params) > 5
        for param in params:
            for stat, prefix in (("angular_update", "eta_r"), ("norm", "norm")):
                rows = dynamics[(dynamics["param"] == param) & (dynamics["stat"] == stat)]
                steps, values = scalars(f"{prefix}/{param}")
                assert steps == rows["step"].tolist()
                np.testing.assert_allclose(values, rows["value"].to_numpy(), rtol=1e-6)
        steps, values = scalars("eta_r_predicted")
        assert steps == sorted(dynamics["step"].unique().tolist())
        np.testing.assert_allclose(values, predicted_rotation(run, steps), rtol=1e-6)
        # The equilibrium window of layers.parquet, with ‖ω̂‖ = sqrt(ηC/(2λ − ηλ²)) (eq. 18) for AdamW
        # and none for the rotational run (Algorithm 1 fixes the norms).
        for _, layer in layers[layers["run_id"] == run["run_id"]].iterrows():
            steps, values = scalars(f"layers/{layer['param']}/eta_r")
            assert steps == [layer["window_end"]] and values[0] == pytest.approx(layer["eta_r"], rel=1e-6)
            norm_tag = f"layers/{layer['param']}/norm_predicted"
            if run["rotational"]:
                assert norm_tag not in tags
            else:
                expected = theory.equilibrium_norm("adamw", run["lr"], run["weight_decay"], dim=layer["fan_in"])
                assert scalars(norm_tag)[1][0] == pytest.approx(expected, rel=1e-6)
        # Final metrics as scalars, the config as hparams.
        steps, values = scalars("final/final_val_top1")
        assert steps == [40] and values[0] == pytest.approx(run["final_val_top1"], rel=1e-6)
        plugin = PluginAccumulator(str(out / run["run_id"]))
        plugin.Reload()
        (content,) = plugin.PluginTagToContent("hparams").values()
        recorded = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert recorded["lr"].number_value == run["lr"] and recorded["optimizer"].string_value == "adamw"
        assert recorded["rotational"].bool_value == run["rotational"]
        assert json.loads(recorded["dataset_options"].string_value) == json.loads(run["dataset_options"])
    # The experiment at the top: the hparams dashboard's metric columns are the final metrics only.
    top = PluginAccumulator(str(out))
    top.Reload()
    (content,) = top.PluginTagToContent("hparams").values()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert sorted(m.name.tag for m in experiment.metric_infos) == sorted(
        f"final/{column}" for column in gather.SUMMARY_COLUMNS if runs[column].notna().all())
    assert {"lr", "rotational", "variant"} <= {h.name for h in experiment.hparam_infos}


def test_a_second_export_replaces_the_first_and_a_foreign_directory_is_refused(sweep, tmp_path):
    out = tmp_path / "tb"
    export.export(sweep, "tensorboard", out)
    export.export(sweep, "tensorboard", out)
    for run_dir in (p for p in out.iterdir() if p.is_dir()):
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # replaced, not appended to
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "paper.tex").write_text("mine")
    with pytest.raises(UserError, match="not a rotsweep export; give an empty or new directory"):
        export.export(sweep, "csv", foreign)
    assert [p.name for p in foreign.iterdir()] == ["paper.tex"] and (foreign / "paper.tex").read_text() == "mine"


def test_an_ungathered_sweep_and_an_unknown_format_are_one_line_errors(sweep, tmp_path):
    with pytest.raises(UserError, match="rotsweep gather"):
        export.export(tmp_path / "nothing-here", "csv")
    with pytest.raises(UserError, match="choose one of tensorboard, wandb, csv"):
        export.export(sweep, "mlflow", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("to", ["tensorboard", "wandb"])
def test_a_missing_extra_names_the_pip_command(sweep, tmp_path, monkeypatch, to):
    monkeypatch.setitem(sys.modules, to, None)  # what `import` sees when the package is not installed
    with pytest.raises(UserError, match=rf"pip install 'rotsweep\[{to}\]'"):
        export.export(sweep, to, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- W&B offline -------------------------------------------------------------------------------


def wandb_records(path: Path):
    """The records of a .wandb file, parsed with wandb's own protobuf Record.

    The file is wandb's transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
    LevelDB-log records in 32 KiB blocks, each with a 7-byte header (crc32, length, type FULL=1,
    FIRST=2, MIDDLE=3, LAST=4) — wandb's datastore format, read here without wandb.Api.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:  # zero padding at a block's end
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def key(item) -> str:
    """An item's key: wandb keeps it in `key` or, for some keys, as the one part of `nested_key`."""
    return item.key or ".".join(item.nested_key)


class ConnectionCounter:
    """A TCP listener on localhost that counts the connections made to it."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopped.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self):
        self.stopped.set()
        self.thread.join()
        self.server.close()


def test_wandb_offline_runs_read_back_equal_to_the_parquet_without_the_network(sweep, tmp_path):
    out = tmp_path / "wandb"
    # Every way W&B could reach a server leads to this listener: its base URL and HTTP proxies.
    counter = ConnectionCounter()
    address = f"http://127.0.0.1:{counter.port}"
    env = dict(os.environ, WANDB_BASE_URL=address, HTTP_PROXY=address, HTTPS_PROXY=address,
               http_proxy=address, https_proxy=address, NO_PROXY="", no_proxy="", WANDB_MODE="online",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])))
    try:
        result = subprocess.run([*ROTSWEEP, "export", str(sweep), "--to", "wandb", "--out", str(out)], env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        counter.close()
    assert result.returncode == 0, result.stderr
    assert counter.connections == 0
    runs, curves, _ = results(sweep)
    files = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert sorted(f.stem.removeprefix("run-") for f in files) == sorted(runs["run_id"])

    for file in files:
        records = wandb_records(file)
        (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        run = runs.set_index("run_id").loc[run_record.run_id]
        assert run_record.project == "sweep"
        config = {key(item): json.loads(item.value_json) for item in run_record.config.update}
        assert config["lr"] == run["lr"] and config["rotational"] == run["rotational"]
        assert config["dataset_options"] == json.loads(run["dataset_options"])
        history: dict[str, dict[int, float]] = {}
        for record in records:
            if record.WhichOneof("record_type") == "history":
                step = record.history.step.num
                for item in record.history.item:
                    history.setdefault(key(item), {})[step] = json.loads(item.value_json)
        own = curves[curves["run_id"] == run_record.run_id]
        for (split, metric), rows in own.groupby(["split", "metric"]):
            assert history[f"{split}/{metric}"] == dict(zip(rows["step"], rows["value"]))  # exact: JSON floats
        dynamics = gather.read_dynamics(sweep, [run_record.run_id], stats=["angular_update"], reductions=["mean"])
        for param, rows in dynamics.groupby("param"):
            assert history[f"eta_r/{param}"] == dict(zip(rows["step"], rows["value"]))
        predicted = history["eta_r_predicted"]
        np.testing.assert_allclose(list(predicted.values()), predicted_rotation(run, list(predicted)), rtol=1e-12)
        summary = {key(item): json.loads(item.value_json) for r in records
                   if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
        assert summary["final_val_loss"] == run["final_val_loss"] and summary["eta_r_hat"] == run["eta_r_hat"]


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_tables_read_back_equal_to_the_parquet(sweep, tmp_path):
    out = tmp_path / "csv"
    result = subprocess.run([*ROTSWEEP, "export", str(sweep), "--to", "csv", "--out", str(out)],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert result.returncode == 0, result.stderr
    assert f"exported 2 runs of {sweep} to csv: {out}" in result.stdout
    runs, curves, layers = results(sweep)
    for name, table in (("curves", curves), ("layers", layers), ("dynamics", gather.read_dynamics(sweep))):
        read = pd.read_csv(out / f"{name}.csv")
        assert list(read.columns) == list(table.columns)
        for column in table.columns:
            if pd.api.types.is_numeric_dtype(table[column]):
                np.testing.assert_array_equal(read[column].to_numpy(float), table[column].to_numpy(float))
            else:
                assert read[column].astype(str).tolist() == table[column].astype(str).tolist()
    read_runs = pd.read_csv(out / "runs.csv")
    assert read_runs["run_id"].tolist() == runs["run_id"].tolist()
    np.testing.assert_array_equal(read_runs["final_val_loss"], runs["final_val_loss"])


def test_export_does_not_import_torch():
    code = "import sys, rotsweep.analysis.export; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert result.stdout.strip() == "False", result.stderr
