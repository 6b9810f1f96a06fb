"""Benchmark: what a ControlNet adds to a guided model call, against its own forward pass.

An SDXL-kind UNet (random weights; ``--tiny``: the small one of :mod:`samplers.sdxl_speed`,
else the full SDXL base config) behind :class:`DiffusersUNet` and :class:`CFGDenoiser`,
and a ControlNet built ``from_unet``. In interleaved rounds (medians) it times one guided
call (batch 2: cond and uncond) without a ControlNet, with one, with one whose window the
call falls outside of, and the ControlNet's forward pass alone on the same batch. The
claim checked: (with - without) / ControlNet alone is about 1, and outside the window the
call costs what it does without::

    python -m samplers.controlnet_cost --device cpu --tiny --size 64 --rounds 15
    python -m samplers.controlnet_cost --device cuda --size 1024 --rounds 15
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from kdiff_differential.errors import InputError
from samplers.arguments import model_benchmark, positive
from samplers.sdxl_speed import guided_unet

CALLS = 10  # model calls per timing


def measure(device: str, size: int, rounds: int, tiny: bool) -> dict:
    from diffusers import ControlNetModel

    from kdiff_differential.models.controlnets import Control, control_run
    from kdiff_differential.models.families import StableDiffusionXL

    dev = torch.device(device)
    unet, denoiser, extra = guided_unet(device, size, tiny)
    dtype = unet.dtype
    # Its conditioning embedding downsamples the control image by 8, as the VAE does.
    net = ControlNetModel.from_unet(unet).to(dev, dtype).eval()
    sigmas = denoiser.inner_model.get_sigmas(10).to(dev)
    image = np.zeros((size, size, 3), np.uint8)
    clock = denoiser.inner_model.sigma_to_t

    def run_for(control: Control):
        return control_run(StableDiffusionXL, [net], [control], lambda image, config: torch.rand(1, 3, size, size, device=dev), sigmas, clock)

    variants = {"without": extra, "with": {**extra, "control": run_for(Control(image))},
                "outside the window": {**extra, "control": run_for(Control(image, start=0.5))}}
    x = torch.randn(1, 4, size // 8, size // 8, device=dev) * sigmas[0]
    sigma = sigmas[:1]  # the first step's: outside a window that starts at 0.5
    t = clock(sigma).expand(2)
    alone_inputs = {
        "sample": torch.cat([x, x]).to(dtype), "timestep": t, "controlnet_cond": torch.rand(2, 3, size, size, device=dev, dtype=dtype),
        "encoder_hidden_states": torch.cat([extra["uncond"]["crossattn"], extra["cond"]["crossattn"]]).to(dtype),
        "added_cond_kwargs": {key: torch.cat([extra["uncond"][key], extra["cond"][key]]).to(dtype) for key in ("text_embeds", "time_ids")},
        "return_dict": False,
    }

    def timed(call) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(CALLS):
                call()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / CALLS

    calls = {name: (lambda args=args: denoiser(x, sigma, **args)) for name, args in variants.items()}
    calls["ControlNet alone"] = lambda: net(**alone_inputs)
    for call in calls.values():
        timed(call)  # warm-up
    times: dict = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # the order rotates
            times[name].append(timed(calls[name]))
    ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    return {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "size": size, "rounds": rounds,
        "unet": "tiny" if tiny else "sdxl-base", "ms_per_call": ms,
        "added_over_controlnet_alone": (ms["with"] - ms["without"]) / ms["ControlNet alone"],
        "outside_over_without": ms["outside the window"] / ms["without"],
    }


PROG = "python -m samplers.controlnet_cost"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the measurement as JSON (and write it to ``--json``); 2 on bad input."""

    def options(parser) -> None:
        parser.add_argument("--size", type=positive, default=64, help="image side in pixels (latent = size / 8)")

    def run(args) -> dict:
        if args.size < 32 or args.size % 32:
            raise InputError(f"--size must be a multiple of 32, got {args.size}")
        return measure(args.device, args.size, args.rounds, args.tiny)

    return model_benchmark(PROG, __doc__, argv, options, run, default_device="cpu")


if __name__ == "__main__":
    sys.exit(main())
