"""A sweep's outputs: results.csv, results.md, grid.png and tradeoff.png.

Every file is written atomically, so an interrupted sweep leaves complete files behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from kdiff_differential.errors import InputError
from kdiff_differential.files.atomic import write_atomically
from samplers.metrics import FIDELITY, METRICS, UNITS
from samplers.sweep import Run

PLOTTED = [*METRICS, *FIDELITY]
# What the sweep ran on: each row records it, so that --resume can refuse rows of another sweep.
INPUTS = ["model", "image", "image_sha256", "map", "map_sha256"]
COLUMNS = ["sampler", "steps", "seed", "clock", "strength", "release", "nfe", "seconds", *PLOTTED, *INPUTS]
SUMMARY = ["nfe", "seconds", *PLOTTED]
# tradeoff.png: the smallest y-range a panel shows (metrics are on pixel values in [0, 1]),
# and the line styles and markers that tell coinciding samplers apart.
MIN_SPAN = 0.05
LINES = ["-", "--", ":", "-."]
PANELS_PER_ROW = 4
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d"]
_TYPES: dict[str, Callable[[str], Any]] = {"sampler": str, "clock": str, "release": str, "steps": int, "seed": int, "nfe": int,
                                           **{column: str for column in INPUTS}}


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


def digest(values: np.ndarray) -> str:
    """A content hash of an image or a map (its shape, type and values), hex."""
    import hashlib

    values = np.ascontiguousarray(values)
    return hashlib.sha256(f"{values.shape} {values.dtype}".encode() + values.tobytes()).hexdigest()


def read_resumable(path: Path, inputs: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of the results.csv at ``path`` that a sweep on ``inputs`` (one value per
    column of INPUTS) may continue; an InputError when they were made from other inputs."""
    with open(path, newline="") as file:
        header = csv.DictReader(file).fieldnames or []
    if not set(INPUTS) <= set(header) or "clock" not in header:
        raise InputError(f"{path} does not record the model, image and map its runs were made from (an older sweep); "
                         "choose another --out")
    rows = read_csv(path)
    for row in rows:
        differ = [column for column in INPUTS if row[column] != inputs[column]]
        if differ:
            given = ", ".join(f"{column} {row[column]!r} there, {inputs[column]!r} now" for column in differ)
            raise InputError(f"{path} holds runs made from other inputs ({given}); --resume continues only the same "
                             "model, image and map: choose another --out")
    return rows


def run_of(row: dict[str, Any]) -> Run:
    return Run(row["sampler"], row["steps"], row["seed"], row["clock"], row["strength"], row["release"])


def _median(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def label(sampler: str, release: str, releases: set[str]) -> str:
    """A sampler's name in tables and plots; with the release mode when a sweep compares modes."""
    return sampler if len(releases) < 2 else f"{sampler} ({release})"


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The rows per (sampler label, steps), in first-seen order."""
    releases = {row["release"] for row in rows}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((label(row["sampler"], row["release"], releases), row["steps"]), []).append(row)
    return groups


def medians(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Medians of each summary column per (sampler label, steps), in first-seen order."""
    return {key: {column: _median([row[column] for row in group]) for column in SUMMARY} for key, group in _groups(rows).items()}


def _listed(values: Iterable[Any]) -> str:
    return ", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def summary_header(rows: list[dict[str, Any]]) -> str:
    """What each row of results.md aggregates, in words: one run, or the median of how
    many, over which of the run's other axes (seed, clock, ...)."""
    axes = [field.name for field in dataclasses.fields(Run) if field.name not in ("sampler", "steps")]
    values = {axis: list(dict.fromkeys(row[axis] for row in rows)) for axis in axes}
    if len(values["release"]) > 1:  # each release mode has rows of its own
        axes.remove("release")
    fixed = "; ".join(f"{axis} {_listed(values[axis])}" for axis in axes if len(values[axis]) == 1)
    varied = "; ".join(f"{axis} {_listed(values[axis])}" for axis in axes if len(values[axis]) > 1)
    counts = sorted({len(group) for group in _groups(rows).values()})
    if counts == [1]:
        header = f"Each row is one run ({fixed})."
    else:
        runs = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        header = f"Each row is the median of its {runs} runs, over {varied}" + (f" ({fixed} throughout)." if fixed else ".")
    return header


def write_markdown(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [
        "| sampler | steps | runs | " + " | ".join(SUMMARY) + " |",
        "|---|---:|---:|" + "---:|" * len(SUMMARY),
    ]
    counts = {key: len(group) for key, group in _groups(rows).items()}
    for (sampler, steps), values in medians(rows).items():
        cells = [str(counts[sampler, steps]), *(f"{values[column]:.4g}" for column in SUMMARY)]
        lines.append(f"| {sampler} | {steps} | " + " | ".join(cells) + " |")
    text = summary_header(rows) + "\n\n" + "\n".join(lines) + "\n"
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


def _y_limits(values: list[float]) -> tuple[float, float]:
    """Limits that include 0 and span at least MIN_SPAN, so that run-to-run noise in the
    third decimal does not fill the panel and look like a trend."""
    finite = [value for value in values if math.isfinite(value)] or [0.0]
    low, high = min(0.0, *finite), max(0.0, *finite)
    if high - low < MIN_SPAN:
        low, high = (high - MIN_SPAN, high) if high <= 0 and low < 0 else (low, low + MIN_SPAN)
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def write_tradeoff(path: Path, rows: list[dict[str, Any]]) -> None:
    """Each metric's median against model calls, one line per sampler, one legend for all;
    each y-axis names its unit and which way is better (samplers.metrics.UNITS).

    Samplers whose points coincide (every sampler keeps preserve_max_err at 0) stay
    visible: each has its own hollow marker, of decreasing size, and line style.
    """
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    summary = medians(rows)
    samplers = list(dict.fromkeys(sampler for sampler, _ in summary))
    calls = [values["nfe"] for values in summary.values()]
    columns = min(len(PLOTTED), PANELS_PER_ROW)
    rows_of_panels = -(-len(PLOTTED) // columns)
    figure = _figure(figsize=(4 * columns + 2, 3.6 * rows_of_panels), layout="constrained")
    axes = figure.subplots(rows_of_panels, columns, squeeze=False)
    for axis in axes.flat[len(PLOTTED):]:
        axis.axis("off")
    for axis, metric in zip(axes.flat, PLOTTED):
        for index, sampler in enumerate(samplers):
            points = sorted((values["nfe"], values[metric]) for (name, _), values in summary.items() if name == sampler)
            axis.plot(
                *zip(*points), label=sampler, linestyle=LINES[index % len(LINES)], marker=MARKERS[index % len(MARKERS)],
                markersize=11 - 5 * index / max(1, len(samplers) - 1), markerfacecolor="none", markeredgewidth=1.3,
            )
        shown = [values[metric] for values in summary.values()]
        axis.set_ylim(*_y_limits(shown))
        finite = {value for value in shown if math.isfinite(value)}
        if len(finite) == 1:
            axis.text(0.5, 0.92, f"every sampler: {finite.pop():g}", transform=axis.transAxes, ha="center", fontsize=9)
        if calls and max(calls) >= 10 * max(1, min(calls)):
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("model calls (nfe" + (", log scale)" if axis.get_xscale() == "log" else ")"))
        axis.set_title(metric)
        unit, better = UNITS[metric]
        axis.set_ylabel(f"{unit}\n({better})", fontsize=8)
        axis.grid(alpha=0.3)
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=8, title="sampler")
    _save_figure(figure, path)
