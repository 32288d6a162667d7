"""The paper's figures by name: what each draws, and which sweeps have the data it needs.

Words only, importable without matplotlib: the CLI's `rotsweep plot` help is written from
here. rotsweep.analysis.figures.FIGURES adds to each name how its data is checked and how it
is drawn; `rotsweep plot all` and `rotsweep report` iterate that registry.
"""

from __future__ import annotations

from dataclasses import dataclass

# Who makes the data of each kind of figure (the key is a figure's `data`); a sweep without it
# is a one-line error that ends with this.
SOURCES = {
    "heatmap": "the adam-vs-adamw experiment makes one (`rotsweep launch adam-vs-adamw --model resnet18`)",
    "lr-sweep": "the eta-lambda, warmup and weight-std experiments make them (`rotsweep launch eta-lambda ...`)",
    "curves": "every run records them, the paper's come from the warmup experiment (`rotsweep launch warmup ...`)",
    "dynamics": "every run records them, Figures 3 and 13 come from the dynamics experiment "
                "(`rotsweep launch dynamics ...`)",
    "imbalance": "the imbalance experiment makes them (`rotsweep launch imbalance --model resnet18`)",
    "randomwalk": "`rotsweep randomwalk --optimizer NAME --out DIR/NAME` makes one per optimizer",
}


@dataclass(frozen=True)
class FigureEntry:
    name: str  # `rotsweep plot NAME`, the files SWEEP/figures/<name>.*, a section of the report
    draws: str  # what it shows, with the paper's figure numbers
    data: str  # the SOURCES key of the data it needs

    @property
    def applies_to(self) -> str:
        """Which sweeps have its data (for help texts and the report)."""
        return SOURCES[self.data]


CATALOG: dict[str, FigureEntry] = {entry.name: entry for entry in [
    FigureEntry("heatmap", "Figure 6 left: final metric over lr × weight decay, η̂_r contours (Table 1)", "heatmap"),
    FigureEntry("lr-sweep", "Figures 4, 5, 7 left, 14: final metric against the learning rate, one line per variant",
                "lr-sweep"),
    FigureEntry("curves", "Figure 5 left: train and validation loss over training", "curves"),
    FigureEntry("dynamics", "Figures 3, 4, 6 right, 13: per-layer norm and rotation over training against Table 1",
                "dynamics"),
    FigureEntry("dynamics-neurons", "Figure 7 right: the neurons of one weight over training", "dynamics"),
    FigureEntry("imbalance", "Figure 16 right: imbalanced rotation against narrower networks", "imbalance"),
    FigureEntry("randomwalk", "Figure 9: the random walk of Appendix F against Table 1", "randomwalk"),
]}
