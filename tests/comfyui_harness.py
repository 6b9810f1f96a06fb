"""Running ComfyUI's own Differential Diffusion beside ours: the shared harness.

Used by ``tests/test_comfyui_source.py`` (against a ComfyUI checkout, where one is at
hand) and by ``tests/make_comfyui_golden.py``, which freezes ComfyUI's outputs into
``tests/data/comfyui_golden.pt`` for ``tests/test_comfyui_golden.py`` (every CI run).

ComfyUI's side runs its own ``DifferentialDiffusion`` node, ``KSAMPLER.sample`` (the
start noise, ``KSamplerX0Inpaint``'s blend), its schedulers, ``prepare_mask`` and
``model_sampling.py``, with its fork of the k-diffusion samplers, except ``lms`` and
``dpmpp_sde``, whose fork differs from upstream k-diffusion: KSAMPLER drives upstream's
for those, so that every case isolates the wrapper. Where the case's denoiser is
quantised, ComfyUI's model is too, so the guider runs ComfyUI's ``BaseModel._apply_model``
(``calculate_input``, ``timestep``, ``calculate_denoised`` of its EPS or V_PREDICTION)
around the raw eps or v network; elsewhere it calls the same interpolating k-diffusion
denoiser that our wrapper wraps. Stubbed, as infrastructure only: the node-registration
schema (``comfy_api.latest``, which pulls in video libraries), the model patcher (a dict
of model options) and the rest of the guider. Device management is ComfyUI's own, told
``--cpu``. No ComfyUI code is kept here.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types

import torch

from kdiff_differential import DifferentialDenoiser, make_sigmas

from conftest import SAMPLERS, SIZE, ideal_denoiser, smooth_images
from kdiff_differential.models.ideal import IdealDenoiser

# The ComfyUI the golden file was made from: Comfy-Org/ComfyUI, 2025-10-11, the first
# release of the node's strength input in the V3 schema.
COMFYUI_COMMIT = "a125cd84"
STEPS = 20
# Where ComfyUI's fork of the samplers differs from upstream k-diffusion (not the wrapper):
# ComfyUI's KSAMPLER drives upstream's for these.
FORK_ONLY = ("lms", "dpmpp_sde")


@dataclasses.dataclass(frozen=True)
class Case:
    """One comparison: a sampler on the ideal denoiser with one map, noise and schedule."""

    name: str
    prediction: str = "eps"
    quantize: bool = False
    strength: float = 1.0
    scheduler: str = "karras"
    denoise: float = 1.0
    batch: int = 1
    map_size: int = 40
    # "rand": torch.rand resized bilinearly, never exactly 0 or 1. At latent size (no
    # resize): "gradient" 0 to 1 left to right, "halves" 0 | 1, "levels" all 256 8-bit
    # levels in a random order.
    map_kind: str = "rand"
    # Added to the raw eps or v output: a network error, so that eps and v cases differ.
    flaw: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        """float64 for dpm_adaptive: in float32 its step controller feeds on rounding (errors
        near 1e-8 at the start), so another CPU's rounding takes another path."""
        return torch.float64 if self.name == "dpm_adaptive" else torch.float32

    @property
    def id(self) -> str:
        return (f"{self.name}-{self.prediction}-quantize{self.quantize}-strength{self.strength:g}-{self.scheduler}"
                f"-denoise{self.denoise:g}-batch{self.batch}"
                + (f"-{self.map_kind}" if self.map_kind != "rand" else "") + (f"-flaw{self.flaw:g}" if self.flaw else "")
                + (f"-{str(self.dtype).removeprefix('torch.')}" if self.dtype != torch.float32 else ""))


CASES = tuple(dict.fromkeys((
    # Full denoise (ComfyUI's max-denoise start), interpolating CompVisDenoiser, karras.
    *(Case(name) for name in SAMPLERS),
    *(Case("euler", prediction=p, quantize=q, strength=s) for p in ("eps", "v") for q in (False, True) for s in (0.0, 0.35, 0.6, 1.0)),
    # ComfyUI's `simple` schedule ends well above the model's sigma_min.
    *(Case(name, prediction=p, scheduler="simple") for name in ("dpm_fast", "dpm_adaptive") for p in ("eps", "v")),
    # Batches with one map per image, full and partial denoise.
    *(Case(name, strength=0.6, scheduler="normal", denoise=d, batch=3, map_size=SIZE * 3)
      for name in ("euler_ancestral", "dpmpp_2m", "dpmpp_sde") for d in (1.0, 0.6)),
    # Maps holding exact 0 and 1: karras and normal end at the model's sigma_min, where
    # ComfyUI's `mask >= threshold` frees strength-0 pixels at the last call; simple does not.
    *(Case(name, map_kind=kind, map_size=SIZE) for name in ("euler", "heun", "dpmpp_2m", "lms")
      for kind in ("gradient", "halves", "levels")),
    *(Case("euler", map_kind="gradient", map_size=SIZE, scheduler=schedule, strength=strength, quantize=True)
      for schedule in ("normal", "simple") for strength in (1.0, 0.5)),
    # A flawed network through ComfyUI's own EPS and V_PREDICTION denoised calculation.
    *(Case(name, prediction=p, quantize=True, flaw=0.2, map_kind="levels", map_size=SIZE)
      for name in ("euler", "dpmpp_2s_ancestral") for p in ("eps", "v")),
)))  # Case("euler") comes twice: once is enough
# The cases whose sampler start is frozen too: max-denoise and partial starts, batched.
START_CASES = (CASES[0], *(case for case in CASES if case.name == "euler_ancestral" and case.batch > 1))
# Pairs that differ only in the network's parametrisation (eps, v), flawed.
PREDICTION_PAIRS = tuple(
    (case, dataclasses.replace(case, prediction="v")) for case in CASES if case.flaw and case.prediction == "eps"
)
# ComfyUI's scheduler names at a few step counts, on the ideal denoiser's training levels.
SCHEDULE_CASES = tuple((name, steps) for name in (
    "simple", "sgm_uniform", "normal", "ddim_uniform", "beta", "linear_quadratic", "kl_optimal", "karras", "exponential"
) for steps in (2, 5, 20))


class Flawed(IdealDenoiser):
    """The ideal network with ``flaw`` times its input added to its raw eps or v output."""

    def __init__(self, prediction: str, flaw: float) -> None:
        super().__init__(smooth_images(8, seed=1), prediction=prediction, spread=1.0)  # ideal_denoiser's
        self.flaw = flaw

    def apply_model(self, x, t, cond=None, **kwargs):
        return super().apply_model(x, t, cond) + self.flaw * x


def case_denoiser(case: Case):
    """The k-diffusion denoiser our wrapper wraps for the case."""
    if not case.flaw:
        return ideal_denoiser(case.prediction, quantize=case.quantize)
    from k_diffusion import external

    wrapper = external.CompVisDenoiser if case.prediction == "eps" else external.CompVisVDenoiser
    return wrapper(Flawed(case.prediction, case.flaw), quantize=case.quantize)


def case_map(case: Case, g: torch.Generator) -> torch.Tensor:
    shape = (case.batch, 1, case.map_size, case.map_size)  # one map per image
    if case.map_kind == "rand":
        return torch.rand(shape, generator=g)
    if case.map_kind == "gradient":
        return torch.linspace(0, 1, case.map_size).expand(shape).clone()
    if case.map_kind == "halves":
        return (torch.arange(case.map_size) >= case.map_size // 2).float().expand(shape).clone()
    if case.map_kind == "levels":
        count = case.batch * case.map_size**2
        return (torch.randperm(count, generator=g) % 256 / 255).reshape(shape)
    raise ValueError(f"map_kind must be 'rand', 'gradient', 'halves' or 'levels', got {case.map_kind!r}")


def case_inputs(case: Case):
    """The case's denoiser, latent (batch, 3, SIZE, SIZE), map (batch, 1, n, n) and noise,
    in the case's dtype."""
    denoiser = case_denoiser(case)
    latent = smooth_images(case.batch, seed=3)
    g = torch.Generator().manual_seed(5)
    change_map = case_map(case, g)
    noise = torch.randn(latent.shape, generator=g)
    return denoiser, *(tensor.to(case.dtype) for tensor in (latent, change_map, noise))


def our_run(case: Case, sigmas, fork=None):
    """DifferentialDenoiser(compat="comfyui") over ``sigmas`` under upstream k-diffusion,
    or under ComfyUI's fork of the samplers (``fork``: its modules, see load_comfyui)."""
    from k_diffusion import sampling as upstream

    denoiser, latent, change_map, noise = case_inputs(case)
    sigmas = sigmas.to(case.dtype)
    sampling = fork.sampling if fork is not None else upstream
    settings = dict(noise=noise, strength=case.strength, compat="comfyui")
    run = dict(extra_args={"cond": None}, disable=True)
    with torch.no_grad():
        if case.name in ("dpm_fast", "dpm_adaptive"):
            # The range the user hands these two: the schedule's first and last non-zero levels.
            sigma_min, sigma_max = sigmas[-2], sigmas[0]
            dd = DifferentialDenoiser(denoiser, latent, change_map, sigma_min=sigma_min, sigma_max=sigma_max, **settings)
            model = Forked(dd, Guider(fork, case)) if fork is not None else dd
            torch.manual_seed(0)
            if case.name == "dpm_fast":
                return sampling.sample_dpm_fast(model, dd.noisy_latent(), sigma_min, sigma_max, STEPS, **run)
            return sampling.sample_dpm_adaptive(model, dd.noisy_latent(), sigma_min, sigma_max, **run)
        dd = DifferentialDenoiser(denoiser, latent, change_map, sigmas=sigmas, **settings)
        model = Forked(dd, Guider(fork, case)) if fork is not None else dd
        torch.manual_seed(0)
        return getattr(sampling, f"sample_{case.name}")(model, dd.noisy_latent(), sigmas, **run)


def our_start(case: Case, sigmas):
    """Our sampler's start x for the case (``dd.noisy_latent()``)."""
    denoiser, latent, change_map, noise = case_inputs(case)
    return DifferentialDenoiser(denoiser, latent, change_map, sigmas=sigmas, noise=noise, compat="comfyui").noisy_latent()


def our_schedule(name: str, steps: int):
    return make_sigmas(ideal_denoiser(), steps, name)


# ComfyUI's side: everything below needs a checkout (load_comfyui).


def load_comfyui(source: str) -> types.SimpleNamespace:
    """ComfyUI's modules, imported from the checkout at ``source``."""
    if not os.path.isfile(os.path.join(source, "comfy", "samplers.py")):
        raise FileNotFoundError(f"{source!r} holds no comfy/samplers.py; give the root of a ComfyUI checkout")
    if source not in sys.path:
        sys.path.append(source)  # appended: ComfyUI's top-level names must not shadow ours
    options = importlib.import_module("comfy.options")
    options.enable_args_parsing(False)  # ComfyUI would parse pytest's argv
    importlib.import_module("comfy.cli_args").args.cpu = True  # device management without a GPU
    sys.modules.setdefault("comfy_api.latest", _schema_stub())
    return types.SimpleNamespace(
        samplers=importlib.import_module("comfy.samplers"),
        sampling=importlib.import_module("comfy.k_diffusion.sampling"),
        model_sampling=importlib.import_module("comfy.model_sampling"),
        model_base=importlib.import_module("comfy.model_base"),
        helpers=importlib.import_module("comfy.sampler_helpers"),
        node=importlib.import_module("comfy_extras.nodes_differential_diffusion").DifferentialDiffusion,
    )


def _schema_stub() -> types.ModuleType:
    """``comfy_api.latest``: the node's registration schema, which the node's forward never reads."""

    class Declared:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    io = types.SimpleNamespace(
        ComfyNode=object,
        Schema=Declared,
        Model=types.SimpleNamespace(Input=Declared, Output=Declared),
        Float=types.SimpleNamespace(Input=Declared),
        NodeOutput=lambda *values: values,
    )
    module = types.ModuleType("comfy_api.latest")
    module.io, module.ComfyExtension = io, object
    return module


class Patcher:
    """ComfyUI's ModelPatcher as the node uses it: a clone that carries model options."""

    def __init__(self, model_options=None):
        self.model_options = dict(model_options or {})

    def clone(self):
        return Patcher(self.model_options)

    def set_model_denoise_mask_function(self, function):
        self.model_options["denoise_mask_function"] = function


class Guider:
    """ComfyUI's model wrap (a CFGGuider over a BaseModel) for the case's model.

    ``inner_model`` is a BaseModel with ComfyUI's own ``model_sampling``,
    ``scale_latent_inpaint`` and (quantised cases) ``_apply_model`` around the raw
    network; ``model_patcher`` hands out that model_sampling. Unquantised cases call
    the interpolating k-diffusion denoiser instead, which ComfyUI's model is not."""

    def __init__(self, comfy, case: Case):
        denoiser = case_denoiser(case)
        mixin = comfy.model_sampling.EPS if case.prediction == "eps" else comfy.model_sampling.V_PREDICTION
        sampling = type("ModelSampling", (comfy.model_sampling.ModelSamplingDiscrete, mixin), {})()
        sampling.set_sigmas(denoiser.sigmas)  # the toy model's training levels
        network = denoiser.inner_model
        base = types.SimpleNamespace(
            model_sampling=sampling, manual_cast_dtype=None, get_dtype=lambda: torch.float32,
            diffusion_model=lambda xc, t, context=None, control=None, transformer_options=None: network.apply_model(xc, t),
        )
        for method in ("scale_latent_inpaint", "_apply_model", "process_timestep"):
            setattr(base, method, types.MethodType(getattr(comfy.model_base.BaseModel, method), base))
        self.denoiser, self.inner_model, self.quantize = denoiser, base, case.quantize
        self.model_patcher = types.SimpleNamespace(get_model_object=lambda name: getattr(base, name))

    def __call__(self, x, sigma, model_options={}, seed=None, **kwargs):
        if self.quantize:
            return self.inner_model._apply_model(x, sigma)
        return self.denoiser(x, sigma, cond=None)


class Forked:
    """Our wrapper driven by ComfyUI's fork of the samplers, which reads the model's
    model_sampling through ``inner_model``."""

    def __init__(self, wrapper, guider):
        self.wrapper, self.inner_model = wrapper, guider

    def __call__(self, x, sigma, **kwargs):
        return self.wrapper(x, sigma, **kwargs)


def comfyui_schedule(comfy, case: Case):
    """ComfyUI's KSampler.set_steps: steps / denoise steps, of which the last STEPS are run."""
    guider = Guider(comfy, case)
    total = STEPS if case.denoise >= 1 else int(STEPS / case.denoise)
    sigmas = comfy.samplers.calculate_sigmas(guider.inner_model.model_sampling, case.scheduler, total)
    return sigmas[-(STEPS + 1) :].float().to(case.dtype)


def comfyui_named_schedule(comfy, name: str, steps: int):
    """ComfyUI's calculate_sigmas for the ideal denoiser's training levels."""
    guider = Guider(comfy, Case("euler"))
    return comfy.samplers.calculate_sigmas(guider.inner_model.model_sampling, name, steps).float()


def comfyui_start(comfy, case: Case, sigmas):
    """KSAMPLER.sample's start: the noise scaled by ComfyUI's model_sampling (sqrt(1 + sigma^2)
    at its max-denoise start), plus the latent."""
    _, latent, _, noise = case_inputs(case)
    guider = Guider(comfy, case)
    sampler = comfy.samplers.ksampler(case.name)
    return guider.inner_model.model_sampling.noise_scaling(sigmas[0], noise, latent, sampler.max_denoise(guider, sigmas))


def comfyui_run(comfy, case: Case, sigmas):
    """ComfyUI's node and KSAMPLER.sample, as its KSampler node drives them (with
    upstream k-diffusion's sampler for the FORK_ONLY names)."""
    from k_diffusion import sampling as upstream

    _, latent, change_map, noise = case_inputs(case)
    sigmas = sigmas.to(case.dtype)
    guider = Guider(comfy, case)
    if case.name in FORK_ONLY:
        sampler = comfy.samplers.KSAMPLER(getattr(upstream, f"sample_{case.name}"))
    else:
        sampler = comfy.samplers.ksampler(case.name)
    (patched,) = comfy.node.execute(Patcher(), strength=case.strength)
    mask = comfy.helpers.prepare_mask(change_map, noise.shape, "cpu")
    extra_args = {"model_options": patched.model_options}
    torch.manual_seed(0)
    with torch.no_grad():
        return sampler.sample(
            guider, sigmas, extra_args, None, noise, latent_image=latent, denoise_mask=mask, disable_pbar=True
        )
