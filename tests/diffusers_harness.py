"""The cases ``compat="diffusers"`` is checked on, and both sides of each.

The diffusers community Differential Diffusion pipelines (huggingface/diffusers
``examples/community``: SDXL, SD3, Flux.1, Z-Image) are loaded from the folder named
by ``KDIFF_DIFFUSERS_COMMUNITY`` (never committed here) and run on tiny random models
(``conftest``'s builders, seeded) with graded keep-maps; ``pipeline_run`` records their
image latent, noise, schedule and final latent. ``our_run`` gives the same latent and
noise to the family's denoiser, ``DifferentialDenoiser(compat="diffusers")`` and
k-diffusion's Euler. ``make_diffusers_golden.py`` freezes the pipelines' side;
``test_diffusers_compat.py`` compares.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable

import torch

from conftest import save_tiny_flow, save_tiny_sdxl

DIFFUSERS_COMMIT = "58eb52c080"  # the huggingface/diffusers snapshot the golden file was made from
HEIGHT = WIDTH = 32  # pixels; every tiny VAE here halves them
STEPS = (5, 8)
PROMPT = "a red cat"
SEED = 7
PIXELS = torch.Generator().manual_seed(3)
IMAGE = torch.rand(1, 3, HEIGHT, WIDTH, generator=PIXELS) * 2 - 1


def _blocks(values: torch.Tensor) -> torch.Tensor:
    """(h, w) values as a (1, 1, 2h, 2w) map constant on each 2x2 block, so that a
    resize to latent size (nearest, or bilinear at exactly half) keeps every value."""
    return values.repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None].float()


def _maps() -> dict[str, torch.Tensor]:
    """Keep-maps (1 = keep) at image size, float32 in [0, 1]."""
    levels = torch.Generator().manual_seed(11)
    ramp = torch.linspace(0, 1, WIDTH).expand(HEIGHT, WIDTH)
    halves = torch.zeros(HEIGHT // 2, WIDTH // 2)
    halves[:, WIDTH // 4:] = 1
    # 8-bit grey levels, multiples of 51 included: 51/255 = 1/5, on a 5-step threshold.
    grey = torch.randint(0, 256, (HEIGHT // 2, WIDTH // 2), generator=levels)
    grey[0, :6] = torch.tensor([0, 51, 102, 153, 204, 255])
    ends = torch.randint(0, 2, (HEIGHT // 2, WIDTH // 2), generator=levels).float()
    ends[::4, ::3] = 0.5
    return {
        "gradient": ramp[None, None].float().contiguous(),
        "halves": _blocks(halves),
        "levels": _blocks(grey.float() / 255),
        "zeros-ones": _blocks(ends),
    }


MAPS = _maps()


def _zimage(folder: Path) -> Path:
    from families_tiny import save_tiny_zimage

    return save_tiny_zimage(folder)


# name: (community file, class, builder, the pipeline's own settings, our cfg)
PIPELINES: dict[str, tuple[str, str, Callable[[Path], Path], dict[str, Any], float]] = {
    "sdxl": ("pipeline_stable_diffusion_xl_differential_img2img.py", "StableDiffusionXLDifferentialImg2ImgPipeline",
             lambda folder: save_tiny_sdxl(folder, "epsilon"), {"guidance_scale": 1.0}, 1.0),
    "sd3": ("pipeline_stable_diffusion_3_differential_img2img.py", "StableDiffusion3DifferentialImg2ImgPipeline",
            lambda folder: save_tiny_flow(folder, "sd3"), {"guidance_scale": 1.0, "max_sequence_length": 16}, 1.0),
    "flux": ("pipeline_flux_differential_img2img.py", "FluxDifferentialImg2ImgPipeline",
             lambda folder: save_tiny_flow(folder, "flux"), {"guidance_scale": 3.5, "max_sequence_length": 16}, 3.5),
    "z-image": ("pipeline_z_image_differential_img2img.py", "ZImageDifferentialImg2ImgPipeline", _zimage,
                {"guidance_scale": 1.0}, 1.0),
}
CASES = [(name, map_name, steps) for name in PIPELINES for map_name in MAPS for steps in STEPS]


def case_id(name: str, map_name: str, steps: int) -> str:
    return f"{name}-{map_name}-{steps}"


def fingerprint(folder: Path) -> float:
    """A sum over the saved network's weights: the seeded tiny model rebuilt as it was frozen."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("unet/*.safetensors")) + sorted(folder.glob("transformer/*.safetensors"))
    return float(sum(weights.double().abs().sum() for file in files for weights in load_file(file).values()))


def load_community(source: str, name: str, folder: Path) -> Any:
    """The community pipeline ``name`` from the folder ``source``, holding the parts of
    the tiny model saved in ``folder``."""
    import diffusers

    file, cls, _, _, _ = PIPELINES[name]
    spec = importlib.util.spec_from_file_location(f"community_{name.replace('-', '_')}", Path(source) / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kind = getattr(module, cls)
    base = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    accepted = inspect.signature(kind.__init__).parameters
    pipe = kind(**{part: value for part, value in base.components.items() if part in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_run(pipe: Any, name: str, keep: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """The community pipeline's run on :data:`IMAGE` with the keep-map ``keep`` (1, 1, H, W):
    its image latent and noise (those that its re-noised original is made of), its
    schedule (the scheduler's sigmas: flow t for the flow pipelines) and final latent,
    all (1, C, h, w)."""
    scheduler = pipe.scheduler
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    # The noise functions, wrapped on the instance to record what they noise.
    hook = "add_noise" if name == "sdxl" else "scale_noise"
    noising = getattr(scheduler, hook)
    if name == "sdxl":  # add_noise(original, noise, timesteps)
        setattr(scheduler, hook, lambda original, noise, t: seen.append((original, noise)) or noising(original, noise, t))
    else:  # scale_noise(sample, timestep, noise)
        setattr(scheduler, hook, lambda sample, t, noise: seen.append((sample, noise)) or noising(sample, t, noise))
    settings = dict(PIPELINES[name][3], prompt=PROMPT, strength=1.0, num_inference_steps=steps, output_type="latent",
                    generator=torch.Generator().manual_seed(SEED))
    try:
        if name == "sdxl":
            out = pipe(image=IMAGE, original_image=IMAGE, map=keep[0], **settings).images
        elif name == "sd3":
            out = pipe(image=IMAGE, map=keep, height=HEIGHT, width=WIDTH, **settings).images
        else:
            out = pipe(image=IMAGE, mask_image=keep, height=HEIGHT, width=WIDTH, **settings).images
    finally:
        delattr(scheduler, hook)
    # SDXL and SD3 re-encode the image and draw new noise for the re-noised original
    # (their last call); Flux.1 and Z-Image noise the first encoding throughout.
    latent, noise = seen[-1] if name in ("sdxl", "sd3") else seen[0]
    latent, noise = latent[:1], noise[:1]
    if name == "flux":
        out = pipe._unpack_latents(out, HEIGHT, WIDTH, pipe.vae_scale_factor)
    return {"latent": latent.clone(), "noise": noise.clone(), "sigmas": scheduler.sigmas.clone(), "result": out.clone()}


def our_sigmas(name: str, sigmas: torch.Tensor) -> torch.Tensor:
    """The pipeline's schedule as k-diffusion sigmas: the flow pipelines' t as t / (1 - t)
    (inf at t = 1). Z-Image's ends 0, 0: a last step from t = 0 to 0, which changes
    nothing and which a k-diffusion schedule leaves out (the policy counts it)."""
    if name == "sdxl":
        return sigmas.float()
    t = sigmas.double()
    if t[-2] == 0:
        t = t[:-1]
    return torch.where(t >= 1, torch.full_like(t, float("inf")), t / (1 - t)).float()


def our_run(model: Any, name: str, frozen: dict[str, torch.Tensor], keep: torch.Tensor, **wrapper: Any) -> torch.Tensor:
    """Our side: the family's denoiser, the wrapper under ``compat="diffusers"`` (or the
    ``wrapper`` keywords given) with the keep-map, and k-diffusion's Euler, from the
    pipeline's latent and noise."""
    import k_diffusion as K

    from kdiff_differential import DifferentialDenoiser

    latent, noise = frozen["latent"], frozen["noise"]
    sigmas = our_sigmas(name, frozen["sigmas"])
    args = model.extra_args(PROMPT, "", PIPELINES[name][4], size=(HEIGHT, WIDTH))
    dd = DifferentialDenoiser(model.denoiser_for(latent), latent, keep, sigmas=sigmas, noise=noise, keep_map=True,
                              **(wrapper or {"compat": "diffusers"}))
    with torch.no_grad():
        if torch.isinf(sigmas[0]):
            x = dd.start_from_noise(float(sigmas[1]), **args)
            sigmas = sigmas[1:]
        else:
            x = dd.noisy_latent()
        return K.sampling.sample_euler(dd, x, sigmas, extra_args=args, disable=True)
