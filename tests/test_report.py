"""`rotsweep report`: a self-contained HTML page (and Markdown) for any sweep, checked in a real browser.

The sweep is examples/eta-lambda-tiny.toml trained for real (conftest.eta_lambda_file_sweep),
copied, with one more AdamW run at lr 1e30 that diverges, so the page has a failure to list.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from rotsweep import store, theory, train
from rotsweep.analysis import figures, gather, report
from rotsweep.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
VOID = {"meta", "img", "br", "hr", "link", "input"}


@pytest.fixture(scope="module")
def sweep(eta_lambda_file_sweep, tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("report") / "eta-lambda-tiny"
    shutil.copytree(eta_lambda_file_sweep, sweep, ignore=shutil.ignore_patterns("figures", "report.*"))
    runs = figures.load_runs(sweep)
    diverging = figures.run_config(runs[runs["variant"] == "AdamW"].iloc[0]).replace(lr=1e30)
    train.run(diverging, store.run_dir(sweep, diverging.run_id))
    manifest = store.read_manifest(sweep)
    store.write_manifest(sweep, {**manifest, "runs": [*manifest["runs"], diverging.run_id]})
    gather.gather(sweep)
    return sweep


class Page(HTMLParser):
    """Every tag with its attributes, and whether each opened tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.tags, self.open, self.mismatched = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.mismatched.append(tag)


@pytest.fixture(scope="module")
def written(sweep):
    markdown, page = report.sweep_report(sweep)
    return markdown, page


def test_html_is_self_contained_and_well_formed(sweep, written):
    markdown, page = written
    parser = Page()
    parser.feed(page.read_text())
    assert parser.mismatched == [] and parser.open == []
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown.read_text())
    assert len(images) == len(linked) >= 3  # lr-sweep, curves, dynamics (and dynamics-neurons)
    for attrs, link in zip(images, linked):
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        embedded = base64.b64decode(attrs["src"][len(prefix):])
        assert embedded == (sweep / link).read_bytes()  # the figure the Markdown links, byte for byte
        with Image.open(io.BytesIO(embedded)) as image:
            assert image.format == "PNG" and min(image.size) > 200
    # Nothing outside the file: no other src or href, no stylesheet or script links.
    others = [(tag, key, value) for tag, attrs in parser.tags for key, value in attrs.items()
              if key in ("src", "href") and not value.startswith("data:")]
    assert others == [] and not any(tag in ("link", "script") for tag, _ in parser.tags)


def test_report_holds_grid_table_predictions_and_failures(sweep, written):
    markdown, _ = written
    text = markdown.read_text()
    runs = figures.load_runs(sweep)
    manifest = store.read_manifest(sweep)
    for axis, values in manifest["axes"].items():
        assert f"| {axis} | {', '.join(map(str, values))} |" in text
    assert "validation top-1 accuracy" in text or "val_top1" in text  # the results table of table.py
    # Table 1's η̂_r of each AdamW (η, λ), as theory computes it.
    for _, run in runs[(runs["variant"] == "AdamW") & (runs["lr"] < 1)].iterrows():
        eta_r = theory.expected_rotation("adamw", run["lr"], run["weight_decay"], beta1=run["beta1"])
        row = f"| AdamW | {figures._number(run['lr'])} | {figures._number(run['weight_decay'])} | " \
              f"{figures._number(eta_r)} |"
        assert row in text
    # The diverged run, with its log file (which exists).
    (diverged,) = runs.loc[runs["status"] == "diverged", "run_id"]
    line = next(line for line in text.splitlines() if diverged in line)
    log = store.run_dir(sweep, diverged) / store.LOG_FILE
    assert line.startswith("- **diverged**") and f"`{log}`" in line and log.is_file()
    assert "Every run finished" not in text


def test_report_renders_in_a_real_browser(written):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, page_file = written
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: errors.append(f"fetched {request.url}")
                    if not request.url.startswith(("file:", "data:")) else None)
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
            headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        finally:
            browser.close()
    assert errors == []
    assert len(widths) >= 3 and all(width > 0 for width in widths), widths
    assert {"Grid", "Results", "Table 1 predictions", "Failures"} <= set(headings)


def test_cli_report_and_its_errors(sweep, tmp_path):
    def rotsweep(*args):
        return subprocess.run([sys.executable, "-m", "rotsweep.cli", "report", *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    done = rotsweep(sweep)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(sweep / "report.html"), str(sweep / "report.md")]
    ungathered = tmp_path / "ungathered"
    (ungathered / "runs").mkdir(parents=True)
    failed = rotsweep(ungathered)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "rotsweep gather" in failed.stderr
    assert not (ungathered / "report.html").exists()
    with pytest.raises(UserError, match="not a directory"):
        report.sweep_report(tmp_path / "nowhere")
