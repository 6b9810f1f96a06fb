"""Command-line pieces the benchmark commands share: argument types and checks that
fail as one InputError line, and the atomic JSON report."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable, Optional, Sequence

from kdiff_differential.errors import InputError, OneLineParser, command_status
from kdiff_differential.files.atomic import write_atomically


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def check_json(path: str | None) -> None:
    """``--json PATH`` can be written: its folder exists and it is not a folder itself."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--json: folder {folder} does not exist")
    if os.path.isdir(path):
        raise InputError(f"--json: {path} is a folder")


def require_cuda(what: str) -> None:
    """InputError saying that ``what`` (a flag, a benchmark) needs CUDA, when no device is available."""
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"{what} needs a CUDA device, and none is available")


def write_json(path: str, report: dict) -> None:
    """Write ``report`` to ``path`` atomically: a reader sees the old file or the new one."""
    write_atomically(path, lambda file: file.write(json.dumps(report, indent=2) + "\n"))


def model_benchmark(prog: str, doc: str, argv, options, measure, default_device: str = "cuda") -> int:
    """The command line of a benchmark on a random diffusers model: ``--device``,
    ``--rounds``, ``--tiny``, ``--json`` and the benchmark's own ``options(parser)``; after
    parsing, ``measure(args)`` gives the result (or raises InputError on bad settings),
    printed as JSON and written to ``--json``. Returns the exit status: 2 on bad input."""
    from kdiff_differential.errors import OneLineParser, command_status
    from kdiff_differential.models.diffusers_model import quiet_loading, require_diffusers

    parser = OneLineParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--rounds", type=positive, default=5 if default_device == "cuda" else 15)
    parser.add_argument("--tiny", action="store_true", help="a small UNet of the same kind (CPU check)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the result here (atomically)")
    options(parser)

    def work() -> None:
        args = parser.parse_args(argv)
        if args.device == "cuda":
            require_cuda("--device cuda")
        check_json(args.json)
        require_diffusers()
        quiet_loading()
        result = measure(args)
        print(json.dumps(result, indent=2))
        if args.json:
            write_json(args.json, result)

    return command_status(prog, work, "interrupted; nothing was written")


def figure_command(argv: Optional[Sequence[str]], prog: str, description: str, option: str, default: int, help: str,
                   draw: Callable[[int], Any]) -> int:
    """A figure script's command: ``--out PATH`` and one size ``option`` (a whole number,
    ``default``), then ``draw(size)``'s uint8 image written to PATH; the exit status."""
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--out", required=True, help="the figure, .png")
    parser.add_argument(option, type=positive, default=default, help=help)

    def work() -> None:
        from kdiff_differential.files.images import output_format, write_image

        args = parser.parse_args(argv)
        output_format(args.out)
        write_image(draw(getattr(args, option.lstrip("-").replace("-", "_"))), args.out)
        print(f"wrote {args.out}")

    return command_status(prog, work, "interrupted; nothing was written")


def steps_table_command(argv: Optional[Sequence[str]], prog: str, description: str, lines: Callable[[int], Sequence[str]]) -> int:
    """A table script's command: ``--steps N`` (default 10), then the Markdown table
    ``lines(steps)`` printed; the exit status."""
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--steps", type=int, default=10, help="sampler steps (default: 10)")

    def work() -> None:
        print("\n".join(lines(parser.parse_args(argv).steps)))

    return command_status(prog, work, "interrupted")

