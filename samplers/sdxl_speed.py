"""Benchmark: the wrapper's cost on a full-size SDXL UNet (random weights), with CFG.

Builds the SDXL base UNet from its published config (stabilityai/stable-diffusion-xl-base-1.0,
unet/config.json) with random weights, in fp16 on CUDA, behind the project's
:class:`DiffusersUNet` and :class:`CFGDenoiser`, and times Euler sampling steps with and
without :class:`DifferentialDenoiser` in interleaved rounds (medians), and the peak memory.
``--tiny`` swaps in a small UNet of the same kind (the CPU check of this script)::

    python -m samplers.sdxl_speed --device cuda --size 1024 --steps 10 --rounds 5
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Optional, Sequence

import torch

from kdiff_differential.errors import InputError
from samplers.arguments import model_benchmark, positive

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)
TINY_UNET = dict(
    SDXL_UNET, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=1, attention_head_dim=4,
    layers_per_block=1, cross_attention_dim=64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=64,
)


def guided_unet(device: str, size: int, tiny: bool) -> tuple:
    """An SDXL-kind UNet with random weights (``tiny``: the small one) in fp16 on CUDA,
    fp32 on CPU; the guided k-diffusion denoiser around it; and the ``extra_args`` of a
    guided call (random conditions, the time ids of a ``size`` square, cfg 7)."""
    import k_diffusion as K
    from diffusers import UNet2DConditionModel

    from kdiff_differential.core.guidance import CFGDenoiser
    from kdiff_differential.models.ideal import sd_alphas_cumprod
    from kdiff_differential.models.networks import DiffusersUNet

    torch.manual_seed(0)
    dev = torch.device(device)
    config = TINY_UNET if tiny else SDXL_UNET
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    unet = UNet2DConditionModel(**config).to(dev, dtype).eval()
    denoiser = CFGDenoiser(K.external.CompVisDenoiser(DiffusersUNet(unet, sd_alphas_cumprod()))).to(dev)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]

    def condition() -> dict:
        return {"crossattn": torch.randn(1, 77, config["cross_attention_dim"], device=dev),
                "text_embeds": torch.randn(1, pooled, device=dev),
                "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=dev)}

    return unet, denoiser, {"cond": condition(), "uncond": condition(), "cfg_scale": 7.0}


def measure(device: str, size: int, steps: int, rounds: int, tiny: bool) -> dict:
    import k_diffusion as K

    from kdiff_differential import DifferentialDenoiser

    dev = torch.device(device)
    unet, denoiser, extra = guided_unet(device, size, tiny)
    latent = torch.randn(1, 4, size // 8, size // 8, device=dev)
    ramp = torch.linspace(0, 1, size // 8, device=dev).expand(1, 1, size // 8, size // 8)
    sigmas = denoiser.inner_model.get_sigmas(steps).to(dev)

    def run(wrapped: bool) -> float:
        model = DifferentialDenoiser(denoiser, latent, ramp, sigmas=sigmas) if wrapped else denoiser
        x = latent + torch.randn_like(latent) * sigmas[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            K.sampling.sample_euler(model, x, sigmas, extra_args=extra, disable=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    run(False), run(True)  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: dict = {"bare": [], "wrapped": []}
    for r in range(rounds):
        for wrapped in ((False, True) if r % 2 == 0 else (True, False)):
            times["wrapped" if wrapped else "bare"].append(run(wrapped))
    bare, wrapped = statistics.median(times["bare"]), statistics.median(times["wrapped"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    return {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "size": size, "steps": steps,
            "rounds": rounds, "unet": "tiny" if tiny else "sdxl-base", "s_per_step_bare": bare,
            "s_per_step_wrapped": wrapped, "ratio": wrapped / bare, "peak_gib": peak}


PROG = "python -m samplers.sdxl_speed"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the measurement as JSON (and write it to ``--json``); 2 on bad input."""

    def options(parser) -> None:
        parser.add_argument("--size", type=positive, default=1024, help="image side in pixels (latent = size / 8)")
        parser.add_argument("--steps", type=positive, default=10)

    def run(args) -> dict:
        if args.size < 16 or args.size % 8:
            raise InputError(f"--size must be a multiple of 8, at least 16, got {args.size}")
        return measure(args.device, args.size, args.steps, args.rounds, args.tiny)

    return model_benchmark(PROG, __doc__, argv, options, run)


if __name__ == "__main__":
    sys.exit(main())
