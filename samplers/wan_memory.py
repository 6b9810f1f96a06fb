"""The memory of a Wan clip's VAE encode and decode, with and without tiling (issue 30).

The Wan 2.1 VAE (``AutoencoderKLWan`` with the configuration of Wan 2.1's checkpoints:
diffusers' class defaults, which ``scripts/convert_wan_to_diffusers.py`` loads
``Wan2.1_VAE.pth`` into, strictly), random weights, encodes and decodes clips of each
``--frames`` count through our codec (``Wan.vae_encode`` / ``Wan.vae_decode``, what
``DiffusersPipeline.encode`` / ``decode`` run), untiled and tiled. Each run is a fresh
process, so that one run's memory cannot hide in another's. The peak is, on CUDA,
``torch.cuda.max_memory_allocated`` over the call minus what was allocated before it
(the weights); on the CPU, the peak resident set over the call (VmHWM, reset through
/proc/self/clear_refs) minus the resident set before it, with glibc told to give every
block of 64 KiB or more back to the system when it is freed. The input exists before
the call, so the peak holds the output (float32, as our codec gives it) and the VAE's
working memory: the peak minus the output. Tiles are diffusers' (256 pixels, stride
192) scaled by the frame's height over 480, so that every size is cut into the same
grid of tiles as 480 x 832 is by ``vae_tiling=True`` (3 x 5)::

    OMP_NUM_THREADS=2 python -m samplers.wan_memory       # CPU, 64 x 104, fp32: about 4 min
    OMP_NUM_THREADS=2 python -m samplers.wan_memory --frames 5 9 --size 120x208
    python -m samplers.wan_memory --device cuda --dtype bf16 --frames 81 --size 480x832
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from kdiff_differential.errors import InputError, OneLineParser, command_status
from samplers.arguments import check_json, positive, require_cuda, write_json

PROG = "python -m samplers.wan_memory"
MIB = 2**20
# diffusers' AutoencoderKLWan tiles: 256 pixels, a stride of 192, meant for 480p and up.
TILE, STRIDE, HEIGHT = 256, 192, 480
# The Wan 2.1 VAE's architecture: AutoencoderKLWan's defaults, the ones diffusers' conversion
# script loads Wan2.1_VAE.pth into strictly (latents_mean / latents_std: the defaults too).
CONFIG = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
          "temperal_downsample": [False, True, True], "dropout": 0.0}


def tiles(height: int) -> tuple[int, int]:
    """The tile and its stride in pixels for frames ``height`` high: diffusers' at 480."""
    tile = max(8, 8 * round(TILE / 8 * height / HEIGHT))
    return tile, tile * STRIDE // TILE


def wan21_vae():
    """The Wan 2.1 VAE with random weights (seed 0), its configuration checked."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**CONFIG)
    assert vae.config.scale_factor_spatial == 8 and vae.config.scale_factor_temporal == 4
    return vae


def resident() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def one_run(settings: dict) -> dict:
    """One encode or decode (``settings``: device, dtype, frames, height, width, tiling,
    op), in this process: its peak and its tensors' bytes."""
    import torch

    from kdiff_differential.models.families.wan import Wan

    device = torch.device(settings["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[settings["dtype"]]
    vae = wan21_vae().to(device, dtype).eval().requires_grad_(False)
    if settings["tiling"]:
        tile, stride = tiles(settings["height"])
        vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile, tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    frames, height, width = settings["frames"], settings["height"], settings["width"]
    generator = torch.Generator().manual_seed(1)
    if settings["op"] == "encode":
        # What DiffusersPipeline.encode hands the family: float32 pixels in [-1, 1] on the device.
        given = (torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1).to(device)
        call = Wan.vae_encode
    else:
        given = torch.randn(1, 16, 1 + (frames - 1) // 4, height // 8, width // 8, generator=generator).to(device)
        call = Wan.vae_decode
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = resident()["VmRSS"]
    start = time.perf_counter()
    try:
        with torch.no_grad():
            result = call(vae, given)
    except torch.cuda.OutOfMemoryError:
        return {**settings, "peak": None, "input": given.numel() * given.element_size(), "output": None, "shape": None,
                "seconds": time.perf_counter() - start}
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resident()["VmHWM"] - before
    return {**settings, "peak": peak, "input": given.numel() * given.element_size(), "output": result.numel() * result.element_size(),
            "shape": list(result.shape), "seconds": time.perf_counter() - start}


def measure(settings: dict) -> dict:
    """:func:`one_run` in a fresh Python process (glibc returning freed blocks of 64 KiB and up)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = "import json, sys; from samplers.wan_memory import one_run; print(json.dumps(one_run(json.loads(sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise RuntimeError(f"the run {settings} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def size(text: str) -> tuple[int, int]:
    """``HxW`` in pixels, each side a multiple of 8 (the VAE's factor)."""
    height, _, width = text.partition("x")
    try:
        sides = int(height), int(width)
    except ValueError:
        raise InputError(f"--size: expected HxW in pixels (e.g. 480x832), got {text!r}") from None
    if min(sides) < 8 or any(side % 8 for side in sides):
        raise InputError(f"--size: each side must be a multiple of 8 (the VAE's factor), got {text!r}")
    return sides


def table(runs: Sequence[dict]) -> str:
    """The runs as a Markdown table, MiB (a run that ran out of CUDA memory says so)."""
    lines = ["| frames | call | tiling | input (MiB) | output (MiB) | peak (MiB) | peak - output (MiB) | s |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        if run["peak"] is None:
            lines.append(f"| {run['frames']} | {run['op']} | {'tiled' if run['tiling'] else 'whole'} | {run['input'] / MIB:.2f} | | out of memory | | {run['seconds']:.0f} |")
            continue
        lines.append(f"| {run['frames']} | {run['op']} | {'tiled' if run['tiling'] else 'whole'} | {run['input'] / MIB:.2f} | "
                     f"{run['output'] / MIB:.2f} | {run['peak'] / MIB:.0f} | {(run['peak'] - run['output']) / MIB:.0f} | {run['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table (and the runs as JSON to ``--json``); 2 on bad input."""

    def work() -> None:
        parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
        parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the VAE's weights and work")
        parser.add_argument("--frames", type=positive, nargs="+", default=[5, 9, 17], help="clip lengths, each 1 + 4k")
        parser.add_argument("--size", default="64x104", help="HxW in pixels (default: 64x104, about 480x832 over 7.5 and 8)")
        parser.add_argument("--json", metavar="OUT.json", help="also write the runs here (atomically)")
        args = parser.parse_args(argv)
        height, width = size(args.size)
        odd = [count for count in args.frames if (count - 1) % 4]
        if odd:
            raise InputError(f"--frames: Wan's VAE takes 1 + 4k frames, got {', '.join(map(str, odd))}")
        if args.device == "cuda":
            require_cuda("--device cuda")
        elif not os.access("/proc/self/clear_refs", os.W_OK):
            raise InputError("--device cpu measures the resident set through /proc/self/clear_refs (Linux), which is not writable here")
        check_json(args.json)
        runs = [measure({"device": args.device, "dtype": args.dtype, "frames": frames, "height": height, "width": width,
                         "tiling": tiling, "op": op})
                for frames in args.frames for op in ("encode", "decode") for tiling in (False, True)]
        tile, stride = tiles(height)
        print(f"Wan 2.1 VAE, random weights, {args.dtype}, {height} x {width}, on {device_name(args.device)}; tiles {tile} px, stride {stride}")
        print(table(runs))
        if args.json:
            write_json(args.json, {"device": device_name(args.device), "tile": tile, "stride": stride, "runs": runs})

    return command_status(PROG, work, "interrupted; nothing was written")


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "the CPU"


if __name__ == "__main__":
    sys.exit(main())
