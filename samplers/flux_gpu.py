"""Full-size Flux.1 transformer (published config, random weights), 1024², bf16, on CUDA:
time per model call of FlowDenoiser alone and of DifferentialDenoiser around it (A/B
interleaved, medians), and the peak memory of each call.

    python -m samplers.flux_gpu --json flux-gpu.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Optional, Sequence

import torch

from kdiff_differential import DifferentialDenoiser
from kdiff_differential.errors import OneLineParser, command_status
from kdiff_differential.models.diffusers_model import require_diffusers
from kdiff_differential.models.families import Flux
from kdiff_differential.models.flow import FlowDenoiser, flux_mu
from kdiff_differential.models.networks import TransformerVelocity
from samplers.arguments import check_json, positive, require_cuda, write_json

# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
SCHEDULER = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
PROG = "python -m samplers.flux_gpu"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the measurement as JSON (and write it to ``--json``); 2 on bad input."""
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT.json", help="also write the result here (atomically)")
    parser.add_argument("--rounds", type=positive, default=10)

    def work() -> None:
        args = parser.parse_args(argv)
        require_cuda("the Flux.1 benchmark (bf16, 1024²)")
        check_json(args.json)
        require_diffusers()
        result = measure(args.rounds)
        print(json.dumps(result, indent=1))
        if args.json:
            write_json(args.json, result)

    return command_status(PROG, work, "interrupted; nothing was written")


def measure(rounds: int) -> dict:
    """Per-call medians of FlowDenoiser alone and wrapped, and each call's peak memory."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        transformer = FluxTransformer2DModel(**FLUX_DEV).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    latent = torch.randn(1, 16, 128, 128, device="cuda")  # 1024² through the VAE's factor 8
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    change = (1 - (xs**2 + ys**2).sqrt()).clamp(0, 1)
    cond = {
        "text": torch.randn(1, 512, 4096, device="cuda"), "pooled": torch.randn(1, 768, device="cuda"),
        "guidance": torch.tensor([3.5], device="cuda"),
    }
    flow = FlowDenoiser(TransformerVelocity(transformer, Flux.velocity), mu=flux_mu(64 * 64, SCHEDULER))
    dd = DifferentialDenoiser(flow, latent, change, sigmas=flow.get_sigmas(28).float())
    sigma = dd.sigmas[8].reshape(1)
    x = dd.noisy_latent(sigma.item())
    calls = {"flow": lambda: flow(x, sigma, cond=cond), "differential": lambda: dd(x, sigma, cond=cond)}
    times: dict[str, list[float]] = {name: [] for name in calls}
    peaks: dict[str, int] = {}
    with torch.no_grad():
        for name, call in calls.items():
            for _ in range(2):
                call()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            call()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - base
        for _ in range(rounds):
            for name, call in calls.items():
                torch.cuda.synchronize()
                start = time.perf_counter()
                call()
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "weights_GiB": sum(p.numel() * p.element_size() for p in transformer.parameters()) / 2**30,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "min_s": {name: min(t) for name, t in times.items()},
        "max_s": {name: max(t) for name, t in times.items()},
        "ratio_median": statistics.median(times["differential"]) / statistics.median(times["flow"]),
        "peak_above_resident_MiB": {name: peak / 2**20 for name, peak in peaks.items()},
        "max_allocated_GiB": torch.cuda.max_memory_allocated() / 2**30,
    }


if __name__ == "__main__":
    sys.exit(main())
