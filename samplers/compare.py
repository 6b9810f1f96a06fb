"""Compare k-diffusion samplers under Differential Diffusion: ``python -m samplers.compare``.

Runs every (sampler, steps, release, seed, clock) on one image and map, measures each run
(see samplers/metrics.py and docs/samplers.md) and writes DIR/results.csv (one row a run,
rewritten as runs finish, so an interrupted sweep keeps what it finished),
DIR/results.md (per sampler and step count, one run or a median), DIR/grid.png (outputs: samplers
by step counts) and DIR/tradeoff.png (metrics against model calls). Bad input stops it
before any run with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from kdiff_differential.core.clocks import CLOCKS
from kdiff_differential.core.denoiser import RELEASES
from kdiff_differential.core.samplers import OWN_STEPS, RANGE_SAMPLERS, SAMPLERS
from kdiff_differential.errors import InputError, OneLineParser, command_status
from kdiff_differential.files.atomic import same_file
from kdiff_differential.maps.presets import PRESETS
from samplers.executors import EXECUTORS

PROG = "python -m samplers.compare"


def _list_of(kind: Callable[[str], Any], what: str, choices: Optional[Sequence[str]] = None) -> Callable[[str], list]:
    """A comma-separated list of ``kind``; with ``choices``, each must be one of them."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or "" in items:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}")
        try:
            values = [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        for value in values:
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"unknown {what[:-1]} {value!r}; valid: {', '.join(choices)}")
        return list(dict.fromkeys(values))

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _samplers(text: str) -> list[str]:
    return list(SAMPLERS) if text.strip() == "all" else _list_of(str, "samplers", SAMPLERS)(text)


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number in [0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Compare k-diffusion samplers under Differential Diffusion.")
    parser.add_argument("--out", required=True, help="folder for results.csv, results.md, grid.png, tradeoff.png")
    parser.add_argument("--samplers", type=_samplers, default=list(SAMPLERS), help=f"'all' (default) or a list of: {', '.join(SAMPLERS)}")
    parser.add_argument("--steps", type=_list_of(_positive, "whole numbers >= 1"), default=[10, 20, 40], help="step counts (default: 10,20,40)")
    parser.add_argument("--seeds", type=_list_of(int, "whole numbers"), default=[0], help="seeds (default: 0)")
    parser.add_argument("--clock", type=_list_of(str, "clocks", CLOCKS), help=f"clocks, of: {', '.join(CLOCKS)} (default: timestep)")
    parser.add_argument("--release", type=_list_of(str, "releases", RELEASES), default=["faithful"], help=f"release modes, of: {', '.join(RELEASES)} (default: faithful)")
    parser.add_argument("--strength", type=_strength, default=1.0, help="release strength in [0, 1] (default: 1)")
    parser.add_argument("--model", default="builtin", help="'builtin' (default) or a local diffusers folder (SD 1.x/2.x, SDXL, SD3/SD3.5, Flux.1)")
    parser.add_argument("--image", help="input image (default: the bundled example)")
    parser.add_argument("--map", default="gradient-x", help="change map: an image file or a preset (default: gradient-x)")
    parser.add_argument("--executor", default="local", choices=EXECUTORS, help="where runs are done (default: local)")
    parser.add_argument("--address", help="with --executor ray: the cluster's address (default: a local instance)")
    parser.add_argument("--resume", action="store_true", help="skip the runs already in DIR/results.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


OUTPUTS = ("results.csv", "results.md", "grid.png", "tradeoff.png")


def _check_out(out: Path, resume: bool, inputs: dict[str, Optional[str]]) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file; give a folder")
    for name in OUTPUTS:
        for flag, given in inputs.items():
            if given is not None and same_file(out / name, given):
                raise InputError(f"--out {out} would write {out / name}, over the input {flag} {given}; choose another --out")
    if (out / "results.csv").exists() and not resume:
        raise InputError(f"{out / 'results.csv'} exists; pass --resume to continue that sweep, or choose another --out")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")


# What the sweep's metrics, plots and progress bar need: the `samplers` extra.
EXTRA = ("scipy.stats", "matplotlib", "tqdm")


def check_extra() -> None:
    """An InputError naming the `samplers` extra when a module of :data:`EXTRA` cannot be
    imported, so that a sweep stops before its first run, not after its last."""
    import importlib

    missing = []
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.split(".")[0])
    if missing:
        raise InputError(f"the sweep needs the samplers extra (missing: {', '.join(missing)}): pip install -e '.[samplers]'")


def sweep(args: argparse.Namespace) -> Path:
    """Do the sweep ``args`` describes; returns the output folder."""
    from samplers import report
    from samplers.executors import execute, import_ray
    from samplers.sweep import Setup, converged_run, plan, prepared

    check_extra()
    out = Path(args.out)
    _check_out(out, args.resume, {"--image": args.image, "--map": None if args.map in PRESETS else args.map})
    if args.executor == "ray":
        try:
            import_ray()
        except ImportError as error:
            raise InputError(str(error)) from None
    setup = Setup(model=args.model, image=args.image, map=args.map)
    _, original, strength = prepared(setup)  # bad model, image or map: fail before any run
    clocks = args.clock or ["timestep"]
    runs = plan(args.samplers, args.steps, args.seeds, clocks, args.strength, args.release)
    if not runs:
        raise InputError(f"--clock step needs a schedule, and --samplers {','.join(args.samplers)} run sigma ranges; add a clock (timestep, sigma) or a sampler")
    stepless = [name for name in args.samplers if name in RANGE_SAMPLERS]
    if "step" in clocks and stepless:
        print(f"{PROG}: warning: {', '.join(stepless)} run without steps: their runs with the step clock are left out", file=sys.stderr)
    for sampler in OWN_STEPS:
        if sampler in args.samplers and len(args.steps) > 1:
            print(f"{PROG}: warning: {sampler} chooses its own steps: run once, in the rows of steps {args.steps[0]}", file=sys.stderr)

    (out / "images").mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    inputs = {"model": args.model, "image": args.image or "example", "image_sha256": report.digest(original),
              "map": args.map, "map_sha256": report.digest(strength.numpy())}
    rows = {report.run_of(row).key: row for row in report.read_resumable(csv_path, inputs)} if csv_path.exists() else {}
    todo = [run for run in runs if run.key not in rows]
    order = {run.key: index for index, run in enumerate(runs)}

    from kdiff_differential.files.images import read_image, write_image
    from samplers.metrics import change_curve, fidelity
    from tqdm import tqdm

    def image_of(run: Any) -> Path:
        return out / "images" / f"{run.name}.png"

    # The converged edit of each (seed, clock, strength) the runs to do need, for their fidelity.
    references = {converged_run(run).key: converged_run(run) for run in todo}
    missing = [run for run in references.values() if not image_of(run).exists()]
    for run, _, image in execute(args.executor, setup, missing, args.address):
        write_image(image, str(image_of(run)))
    curves = {key: change_curve(read_image(str(image_of(run))), original, strength.numpy()) for key, run in references.items()}

    progress = tqdm(total=len(todo), desc="runs", disable=args.quiet or not sys.stderr.isatty())
    for run, row, image in execute(args.executor, setup, todo, args.address):
        write_image(image, str(image_of(run)))
        row.update(fidelity(change_curve(image, original, strength.numpy()), curves[converged_run(run).key]))
        row.update(inputs)
        rows[run.key] = row
        report.write_csv(csv_path, sorted(rows.values(), key=lambda r: order.get(report.run_of(r).key, len(order))))
        progress.update()
    progress.close()

    done = [rows[run.key] for run in runs]
    report.write_markdown(out / "results.md", done)
    report.write_tradeoff(out / "tradeoff.png", done)
    shown = {}
    releases = set(args.release)
    for run in runs:  # the first seed and clock of each (sampler, release, steps)
        key = (report.label(run.sampler, run.release, releases), run.steps)
        shown.setdefault(key, read_image(str(image_of(run))))
    report.write_grid(out / "grid.png", original, strength.numpy(), shown)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command's entry point; returns the exit status."""

    def work() -> None:
        args = build_parser().parse_args(argv)
        out = sweep(args)
        if not args.quiet:
            print(f"wrote {out}/results.csv, results.md, grid.png, tradeoff.png")

    return command_status(PROG, work, "interrupted; results.csv holds the finished runs (continue with --resume)")


if __name__ == "__main__":
    sys.exit(main())
