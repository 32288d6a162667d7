"""`rotsweep report SWEEP`: one page on a sweep, as SWEEP/report.md and a self-contained SWEEP/report.html.

The page holds the sweep's grid (manifest.json), its results table (rotsweep.analysis.table),
Table 1's predictions next to the measured rotation (runs.parquet: eta_r_hat, eta_g_hat,
norm_hat from rotsweep.theory, eta_r_measured), every figure of the registry that the
sweep's data supports (rotsweep.analysis.figures.FIGURES, with the reason for the others),
and the runs that did not finish well, each with its log file.

A report is a Document of Sections written in a small subset of Markdown (paragraphs, "- "
lists, "|" tables, **bold**, `code`, _emphasis_). to_markdown() links the figures by
relative path; to_html() embeds each PNG as a data: URI and the style inline, so the HTML
file references nothing outside itself (it can be mailed or opened offline). The demo's
report (rotsweep.demo) is a Document rendered by the same two functions.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rotsweep import store
from rotsweep.analysis import figures, table
from rotsweep.errors import UserError

REPORT_DPI = 110  # the report's PNGs: sharp on screen, a few hundred kB each
NOT_WELL = ("failed", "diverged", "preempted", "running", "pending")  # the states the failures section lists


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)  # Markdown (the subset of the module docstring)
    figures: list[Path] = field(default_factory=list)  # PNG files, shown after the lines


@dataclass
class Document:
    title: str
    intro: list[str]
    sections: list[Section]


# --- Rendering ------------------------------------------------------------------------------


def to_markdown(document: Document, base: Path) -> str:
    """The document as Markdown, figures linked relative to `base` (where the .md file is written)."""
    lines = [f"# {document.title}", "", *document.intro]
    for section in document.sections:
        lines += ["", f"## {section.title}", "", *section.lines]
        for path in section.figures:
            lines += ["", f"![{path.stem}]({Path(os.path.relpath(path, base)).as_posix()})"]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Escaped text with **bold**, `code` and _emphasis_ as HTML."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"<em>\1</em>", text)


def _table_html(rows: list[str]) -> str:
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows
             if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", row.strip())]
    head, body = cells[0], cells[1:]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out + ["</tbody>", "</table>"])


def _blocks_html(lines: list[str]) -> str:
    """Markdown lines (the subset) as HTML: consecutive table rows, list items and text lines form blocks."""
    out, block, kind = [], [], None

    def flush():
        if kind == "table":
            out.append(_table_html(block))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(item[2:])}</li>" for item in block) + "</ul>")
        elif kind == "text":
            out.append(f"<p>{_inline(' '.join(block))}</p>")

    for line in [*lines, ""]:
        line_kind = ("table" if line.startswith("|") else "list" if line.startswith("- ")
                     else None if not line.strip() else "text")
        if line_kind != kind or line_kind is None:
            flush()
            block, kind = [], line_kind
        if line_kind is not None:
            block.append(line)
    return "\n".join(out)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f2f2f2}img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{color:#666;font-size:.8em}code{background:#f5f5f5;padding:0 .2em}"""


def to_html(document: Document) -> str:
    """The document as one HTML file: figures embedded as data: URIs, style inline, nothing fetched."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(document.title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{html.escape(document.title)}</h1>", _blocks_html(document.intro)]
    for section in document.sections:
        parts += [f"<h2>{html.escape(section.title)}</h2>", _blocks_html(section.lines)]
        parts += [_image(path) for path in section.figures]
    return "\n".join([*parts, "</body>", "</html>"]) + "\n"


def write(document: Document, directory: Path) -> tuple[Path, Path]:
    """DIRECTORY/report.md and DIRECTORY/report.html (atomically)."""
    md, page = directory / "report.md", directory / "report.html"
    store.write_text(md, to_markdown(document, directory))
    store.write_text(page, to_html(document))
    return md, page


# --- A sweep's report -----------------------------------------------------------------------


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else figures._number(float(value))
    return str(value).replace("|", "/").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]


def grid_section(sweep: Path, runs: pd.DataFrame) -> Section:
    manifest = store.read_manifest(sweep) or {}
    axes = manifest.get("axes") or {}
    lines = [f"Experiment `{manifest.get('experiment', '?')}`, model `{manifest.get('model', '?')}`, "
             f"scale `{manifest.get('scale', '?')}`; {len(runs)} runs with a config."]
    if axes:
        lines += ["", *markdown_table(pd.DataFrame({"axis": list(axes),
                                                    "values": [", ".join(map(str, v)) for v in axes.values()]}))]
    else:
        lines.append("The manifest records no grid (axes): the runs' own values are in the tables below.")
    if manifest.get("overrides"):
        lines += ["", "Overrides: " + ", ".join(f"`{o}`" for o in manifest["overrides"])]
    return Section("Grid", lines)


def results_section(sweep: Path) -> Section:
    try:
        rendered = table.render(table.build(sweep), "md")
    except UserError as error:
        return Section("Results", [f"No results table: {error}"])
    return Section("Results", rendered.split("\n"))


def predictions_section(runs: pd.DataFrame) -> Section:
    """Table 1 at each variant's (η, λ), beside the rotation measured in the equilibrium window."""
    keys = ["variant", "lr", "weight_decay"]
    columns = {"eta_r_hat": "η̂_r (Table 1)", "eta_r_measured": "η_r measured (mean over layers and seeds)",
               "eta_g_hat": "η̂_g per coordinate", "norm_hat": "‖ω̂‖ per coordinate"}
    frame = runs.groupby(keys, sort=True)[list(columns)].mean().reset_index().rename(columns=columns)
    lines = ["η̂_r = equilibrium angular update per step (Table 1, rotsweep.theory) at the peak lr; the measured "
             "value is layers.parquet's mean over the 25–75% window. – where Table 1 needs gradient statistics "
             "(SGDM's η̂_g, Adam+ℓ2's η̂_r) or there is no equilibrium (λ = 0).", "", *markdown_table(frame)]
    return Section("Table 1 predictions", lines)


def _log_paths(sweep: Path, run_id: str, jobs: dict) -> list[str]:
    """The run's log.txt and its job's stdout and stderr (submitit's names in SWEEP/jobs/, as
    `rotsweep logs` finds them: launch.log_paths), each marked when it is missing."""
    paths = [store.run_dir(sweep, run_id) / store.LOG_FILE]
    job = jobs.get(run_id)
    if job:
        paths += [store.jobs_dir(sweep) / f"{job['job_id']}_0_log.{kind}" for kind in ("out", "err")]
    return [f"`{path}`" + ("" if path.is_file() else " (missing)") for path in paths]


def failures_section(sweep: Path, runs: pd.DataFrame) -> Section:
    """Runs that did not finish well, and the files gather could not read."""
    bad = runs[runs["status"].isin(NOT_WELL) | runs["status"].isna()].sort_values(["status", "run_id"])
    jobs = (store.read_manifest(sweep) or {}).get("jobs") or {}
    lines = []
    for _, run in bad.iterrows():
        error = run["error"] if isinstance(run["error"], str) and run["error"] else ""
        lines.append(f"- **{run['status'] or 'unreadable'}** `{run['run_id']}` ({run['variant']}, lr "
                     f"{_cell(run['lr'])}, λ {_cell(run['weight_decay'])})"
                     + (f": {error.splitlines()[-1]}" if error else "")
                     + "; logs: " + ", ".join(_log_paths(sweep, run["run_id"], jobs)))
    problems = results_problems(sweep)
    lines += [f"- gather could not read `{problem}`" for problem in problems]
    return Section("Failures", lines or ["Every run finished (done) and every file was read."])


def results_problems(sweep: Path) -> list[str]:
    from rotsweep.analysis.gather import recorded_problems  # the gather cache: where problems are kept

    return [f"{problem.run_id}: {problem.file}: {problem.reason}" for problem in recorded_problems(sweep)]


def figure_sections(sweep: Path, drawn: figures.Drawn) -> list[Section]:
    sections = []
    for name, figure in figures.FIGURES.items():
        if name in drawn.paths:
            pngs = [path for path in drawn.paths[name] if path.suffix == ".png"]
            sections.append(Section(f"Figure: {name}", [figure.draws], pngs))
    skipped = [f"- **{name}**: {reason}" for name, reason in drawn.skipped.items()]
    if skipped:
        sections.append(Section("Figures not drawn", skipped))
    return sections


def sweep_report(sweep: str | os.PathLike) -> tuple[Path, Path]:
    """Draw the sweep's figures (PNG, FIGURES) and write SWEEP/report.md and SWEEP/report.html."""
    sweep = Path(sweep)
    drawn = figures.plot_all(sweep, figures.FigureFiles(("png",), REPORT_DPI))  # refuses what is not a gathered sweep
    runs = figures.load_runs(sweep)
    counts = runs["status"].fillna("unreadable").value_counts().sort_index()
    intro = [f"Sweep `{sweep.name}`: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + ".",
             "", "Made by `rotsweep report` from the gathered tables (SWEEP/results/); figures are in "
             "SWEEP/figures/ as well."]
    document = Document(f"Sweep report: {sweep.name}", intro, [
        grid_section(sweep, runs), results_section(sweep), predictions_section(runs),
        *figure_sections(sweep, drawn), failures_section(sweep, runs),
    ])
    return write(document, sweep)

