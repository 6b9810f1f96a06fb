"""A sweep's outputs: results.csv, results.md, grid.png and tradeoff.png.

Every file is written atomically, so an interrupted sweep leaves complete files behind.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from kdiff_differential.files import write_atomically
from samplers.metrics import METRICS
from samplers.sweep import Run

COLUMNS = ["sampler", "steps", "seed", "threshold", "strength", "release", "nfe", "seconds", *METRICS]
SUMMARY = ["nfe", "seconds", *METRICS]
_TYPES: dict[str, Callable[[str], Any]] = {"sampler": str, "threshold": str, "release": str, "steps": int, "seed": int, "nfe": int}


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    def write(file: Any) -> None:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(path, write)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a results.csv, with numbers as numbers."""
    with open(path, newline="") as file:
        return [{key: _TYPES.get(key, float)(value) for key, value in row.items()} for row in csv.DictReader(file)]


def run_of(row: dict[str, Any]) -> Run:
    return Run(row["sampler"], row["steps"], row["seed"], row["threshold"], row["strength"], row["release"])


def _median(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def label(sampler: str, release: str, releases: set[str]) -> str:
    """A sampler's name in tables and plots; with the release mode when a sweep compares modes."""
    return sampler if len(releases) < 2 else f"{sampler} ({release})"


def medians(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Medians of each summary column per (sampler label, steps), in first-seen order,
    with ``runs``: how many runs (seeds x clocks) each median is over."""
    releases = {row["release"] for row in rows}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((label(row["sampler"], row["release"], releases), row["steps"]), []).append(row)
    return {
        key: {"runs": len(group), **{column: _median([row[column] for row in group]) for column in SUMMARY}}
        for key, group in groups.items()
    }


def write_markdown(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [
        "| sampler | steps | runs | " + " | ".join(SUMMARY) + " |",
        "|---|---:|---:|" + "---:|" * len(SUMMARY),
    ]
    for (sampler, steps), values in medians(rows).items():
        cells = [f"{values[column]:.4g}" for column in SUMMARY]
        lines.append(f"| {sampler} | {steps} | {values['runs']} | " + " | ".join(cells) + " |")
    text = ("Each row: the median over its `runs` runs (seeds x clocks) of one sampler at one step count; "
            f"{len(rows)} runs in all.\n\n") + "\n".join(lines) + "\n"
    write_atomically(path, lambda file: file.write(text))


def _save_figure(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomically(path, lambda file: file.write(buffer.getvalue()), binary=True)


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure that is not registered with pyplot: drawing it changes no
    backend or global state (a notebook keeps showing its own plots inline)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def write_grid(path: Path, original: np.ndarray, change_map: np.ndarray, images: dict[tuple[str, int], np.ndarray]) -> None:
    """Rows are samplers, columns step counts; the original and the map head the grid.

    ``images`` maps (sampler, steps) to that run's output, uint8 (H, W, 3);
    ``change_map`` is (H, W) in [0, 1], shown white where it changes.
    """
    samplers = list(dict.fromkeys(sampler for sampler, _ in images))
    steps = sorted({count for _, count in images})
    columns = max(2, len(steps))
    figure = _figure(figsize=(2 * columns, 2 * (len(samplers) + 1)))
    axes = figure.subplots(len(samplers) + 1, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].imshow(original)
    axes[0, 0].set_title("original", fontsize=8)
    axes[0, 1].imshow(change_map, cmap="gray", vmin=0, vmax=1)
    axes[0, 1].set_title("map (white = change)", fontsize=8)
    for row, sampler in enumerate(samplers, start=1):
        for column, count in enumerate(steps):
            if (sampler, count) in images:
                axes[row, column].imshow(images[sampler, count])
                axes[row, column].set_title(f"{sampler}, {count} steps", fontsize=8)
    figure.tight_layout()
    _save_figure(figure, path)


def write_tradeoff(path: Path, rows: list[dict[str, Any]]) -> None:
    """Each metric's median against model calls, one line per sampler."""
    summary = medians(rows)
    figure = _figure(figsize=(4 * len(METRICS), 3.5))
    axes = figure.subplots(1, len(METRICS), squeeze=False)
    for axis, metric in zip(axes[0], METRICS):
        for sampler in dict.fromkeys(sampler for sampler, _ in summary):
            points = sorted((values["nfe"], values[metric]) for (name, _), values in summary.items() if name == sampler)
            axis.plot(*zip(*points), marker="o", label=sampler)
        axis.set_xlabel("model calls (nfe)")
        axis.set_title(metric)
    axes[0, -1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    _save_figure(figure, path)
