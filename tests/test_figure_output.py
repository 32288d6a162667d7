"""Figures fit for a paper and a notebook (issue 12, point 8): the matplotlib backend is the
caller's, the analysis does not load torch, PDFs embed TrueType fonts, --format/--dpi choose the
files, and variants come in one order whatever the order of the runs.

The figures are drawn from a real tiny sweep (four short eta-lambda runs, AdamW and RV-AdamW at
two learning rates), trained and gathered once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from rotsweep import store, train
from rotsweep.analysis import figures, gather
from rotsweep.errors import UserError
from rotsweep.experiments import get_experiment

ROOT = Path(__file__).resolve().parents[1]
SHORT = dict(steps=4, eval_interval=2, eval_batches=1, batch_size=16, dynamics_interval=2, train_log_interval=2,
             checkpoint_interval=1000)
TRUETYPE = (b"/Subtype /TrueType", b"/CIDFontType2")  # how matplotlib declares an embedded Type 42 font


def python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)


def rotsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rotsweep.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    runs = [config.replace(**SHORT) for config in get_experiment("eta-lambda").runs("resnet20", scale="tiny")]
    lrs = sorted({config.lr for config in runs})[:2]
    runs = [config for config in runs if config.lr in lrs]
    assert len({config.rotational for config in runs}) == 2, "the sweep must hold two variants"
    directory = tmp_path_factory.mktemp("output") / "eta-lambda-resnet20-tiny"
    for config in runs:
        train.run(config, store.run_dir(directory, config.run_id), progress=False)
    store.write_manifest(directory, {"experiment": "eta-lambda", "model": "resnet20", "scale": "tiny", "seeds": None,
                                     "overrides": [], "runs": [config.run_id for config in runs]})
    gather.gather(directory)
    return directory


def test_importing_the_analysis_keeps_the_notebooks_backend():
    # A backend other than Agg, chosen the way a notebook or a user's matplotlibrc does.
    result = python("import rotsweep.analysis.gather, rotsweep.analysis.figures, matplotlib; "
                    "print(matplotlib.get_backend())", MPLBACKEND="svg")
    assert result.stdout.strip() == "svg"


def test_the_cli_draws_with_agg():
    result = python("from rotsweep import cli; cli._figures(); import matplotlib; print(matplotlib.get_backend())",
                    MPLBACKEND="svg")
    assert result.stdout.strip().lower() == "agg"


def test_importing_the_analysis_does_not_import_torch():
    python("import rotsweep.analysis.gather, rotsweep.analysis.figures; import sys; "
           "assert 'torch' not in sys.modules, 'torch was imported'")


def test_plot_writes_pdfs_with_truetype_fonts_only(sweep):
    result = rotsweep("plot", "lr-sweep", str(sweep))
    assert result.returncode == 0, result.stderr
    pdf = sweep / "figures" / "lr_sweep.pdf"
    assert str(pdf) in result.stdout
    content = pdf.read_bytes()
    assert b"/Subtype /Type3" not in content
    assert any(marker in content for marker in TRUETYPE)


def test_matplotlibs_default_would_write_type3_fonts(tmp_path):
    # The control of the test above: without save()'s settings the same check fails.
    fig, ax = plt.subplots()
    ax.set_title("η̂_r = sqrt(2ηλ)")
    fig.savefig(tmp_path / "default.pdf")
    plt.close(fig)
    assert b"/Subtype /Type3" in (tmp_path / "default.pdf").read_bytes()


def test_format_and_dpi_choose_the_files(sweep, tmp_path):
    result = rotsweep("plot", "all", str(sweep), "--format", "svg,png", "--dpi", "60")
    assert result.returncode == 0, result.stderr
    svg, png = sweep / "figures" / "lr_sweep.svg", sweep / "figures" / "lr_sweep.png"
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    with Image.open(png) as image:
        small_width = image.size[0]
        assert round(image.info["dpi"][0]) == 60
    # Twice the dpi: twice the pixels of the same figure.
    paths = figures.plot_lr_sweep(sweep, files=figures.FigureFiles(("png",), 120))
    assert paths == [png]
    with Image.open(png) as image:
        assert abs(image.size[0] - 2 * small_width) <= 2


def test_unknown_format_is_one_line_error(sweep):
    before = sorted((sweep / "figures").glob("*")) if (sweep / "figures").exists() else []
    result = rotsweep("plot", "lr-sweep", str(sweep), "--format", "png,jpg")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "jpg" in result.stderr and "png, pdf, svg" in result.stderr
    after = sorted((sweep / "figures").glob("*")) if (sweep / "figures").exists() else []
    assert after == before
    with pytest.raises(UserError, match="dpi 0"):
        figures.FigureFiles(("png",), 0)


def legend_labels(fig) -> list[str]:
    return [text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()]


def test_variants_keep_one_order_whatever_the_order_of_the_runs(sweep):
    runs = figures.load_runs(sweep)
    shuffled = runs.iloc[::-1].reset_index(drop=True)
    assert figures.variant_order(runs) == figures.variant_order(shuffled) == sorted(runs["variant"].unique())
    metric = figures.pick_metric(runs)
    for frame in (runs, shuffled):
        best = figures._best_configs(frame, metric)
        assert list(dict.fromkeys(best["variant"])) == figures.variant_order(runs)
    labels = []
    for frame in (runs, shuffled):
        fig = figures.draw_lr_sweep(frame)
        labels.append(legend_labels(fig))
        plt.close(fig)
    assert labels[0] == labels[1]
    variants = [label for label in labels[0] if label in set(runs["variant"])]
    assert variants == figures.variant_order(runs)
