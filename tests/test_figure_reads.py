"""A figure reads only the dynamics rows it draws (issue 14: "plots of that sweep draw without
loading the whole dynamics table").

On a stored 20-run sweep (tests/fixtures/figure-numbers/sweeps/eta-lambda), the files the
Parquet scans open and the rows they return are recorded through a wrapper around
pyarrow.dataset.dataset, the one place rotsweep.analysis.results reads dynamics from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from rotsweep.analysis import figures, results

FIXTURE = Path(__file__).parent / "fixtures" / "figure-numbers" / "sweeps" / "eta-lambda"


@pytest.fixture
def sweep(tmp_path) -> Path:
    copy = tmp_path / "eta-lambda"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.fixture
def scans(monkeypatch):
    """Every dynamics scan: (the files it opens, the table it returns)."""
    opened = []

    class Recorded:
        def __init__(self, dataset):
            self.dataset = dataset

        def to_table(self, **options):
            table = self.dataset.to_table(**options)
            opened.append((sorted(Path(f).stem for f in self.dataset.files), table))
            return table

    real = ds.dataset
    monkeypatch.setattr(results.ds, "dataset", lambda *args, **kwargs: Recorded(real(*args, **kwargs)))
    return opened


@pytest.mark.parametrize("neurons", [False, True])
def test_dynamics_figure_reads_only_its_runs_and_rows(sweep, scans, neurons):
    all_runs = sorted(path.stem for path in (sweep / "results" / "dynamics.parquet").glob("*.parquet"))
    total_rows = sum(pq.ParquetFile(path).metadata.num_rows
                     for path in (sweep / "results" / "dynamics.parquet").glob("*.parquet"))
    layers, chosen, weights = figures.dynamics_selection(sweep)
    scans.clear()
    figures.plot_dynamics(sweep, neurons=neurons, files=figures.FigureFiles(("png",), 50))
    assert len(all_runs) == 20 and len(chosen) == 2
    opened = sorted({run for files, _ in scans for run in files})
    assert opened == sorted(chosen["run_id"])  # 2 of the 20 runs' files
    rows = [table for _, table in scans]
    read = sum(table.num_rows for table in rows)
    assert 0 < read < total_rows / 10
    drawn = rows[1:]  # rows[0]: the weights' model order, from one run's mean angular updates
    order = rows[0]
    assert set(order.column("run_id").to_pylist()) == {chosen["run_id"].iloc[0]}
    assert set(zip(order.column("stat").to_pylist(), order.column("reduction").to_pylist())) == {
        ("angular_update", "mean")}
    assert drawn
    for table in drawn:
        assert set(table.column("run_id").to_pylist()) == set(chosen["run_id"])
        if neurons:  # one weight, the one whose neurons rotate most unevenly
            assert set(table.column("param").to_pylist()) == {figures.neuron_weight(layers, weights)}
        else:
            assert set(zip(table.column("stat").to_pylist(), table.column("reduction").to_pylist())) == set(
                figures.DRAWN_ROWS)
