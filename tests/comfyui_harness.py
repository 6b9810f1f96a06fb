"""Running ComfyUI's own Differential Diffusion beside ours: the shared harness.

Used by ``tests/test_comfyui_source.py`` (against a ComfyUI checkout, where one is at
hand) and by ``tests/make_comfyui_golden.py``, which freezes ComfyUI's outputs into
``tests/data/comfyui_golden.pt`` for ``tests/test_comfyui_golden.py`` (every CI run).

ComfyUI's side runs its own ``DifferentialDiffusion`` node, ``KSAMPLER.sample`` (the
start noise, ``KSamplerX0Inpaint``'s blend), its schedulers, ``prepare_mask`` and
``model_sampling.py``, with its fork of the k-diffusion samplers. Stubbed, as
infrastructure only: the node-registration schema (``comfy_api.latest``, which pulls
in video libraries), the model patcher (a dict of model options) and the guider,
which calls the same toy k-diffusion denoiser that our wrapper wraps. Device
management is ComfyUI's own, told ``--cpu``. No ComfyUI code is kept here.
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

# The ComfyUI the golden file was made from: Comfy-Org/ComfyUI, 2025-10-11, the first
# release of the node's strength input in the V3 schema.
COMFYUI_COMMIT = "a125cd84"
STEPS = 20
# Where ComfyUI's fork of the samplers differs from upstream k-diffusion (not the wrapper).
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

    @property
    def id(self) -> str:
        return (f"{self.name}-{self.prediction}-quantize{self.quantize}-strength{self.strength:g}-{self.scheduler}"
                f"-denoise{self.denoise:g}-batch{self.batch}")


CASES = tuple(dict.fromkeys((
    # Full denoise (ComfyUI's max-denoise start), interpolating CompVisDenoiser, karras.
    *(Case(name) for name in SAMPLERS),
    *(Case("euler", prediction=p, quantize=q, strength=s) for p in ("eps", "v") for q in (False, True) for s in (0.0, 0.35, 0.6, 1.0)),
    # ComfyUI's `simple` schedule ends well above the model's sigma_min.
    *(Case(name, prediction=p, scheduler="simple") for name in ("dpm_fast", "dpm_adaptive") for p in ("eps", "v")),
    # Batches with one map per image, full and partial denoise.
    *(Case(name, strength=0.6, scheduler="normal", denoise=d, batch=3, map_size=SIZE * 3)
      for name in ("euler_ancestral", "dpmpp_2m", "dpmpp_sde") for d in (1.0, 0.6)),
)))  # Case("euler") comes twice: once is enough
# ComfyUI's scheduler names at a few step counts, on the ideal denoiser's training levels.
SCHEDULE_CASES = tuple((name, steps) for name in (
    "simple", "sgm_uniform", "normal", "ddim_uniform", "beta", "linear_quadratic", "kl_optimal", "karras", "exponential"
) for steps in (2, 5, 20))


def case_inputs(case: Case):
    """The case's denoiser, latent (batch, 3, SIZE, SIZE), map (batch, 1, n, n) and noise."""
    denoiser = ideal_denoiser(case.prediction, quantize=case.quantize)
    latent = smooth_images(case.batch, seed=3)
    g = torch.Generator().manual_seed(5)
    change_map = torch.rand(case.batch, 1, case.map_size, case.map_size, generator=g)  # one map per image
    noise = torch.randn(latent.shape, generator=g)
    return denoiser, latent, change_map, noise


def our_run(case: Case, sigmas, fork=None):
    """DifferentialDenoiser(compat="comfyui") over ``sigmas`` under upstream k-diffusion,
    or under ComfyUI's fork of the samplers (``fork``: its modules, see load_comfyui)."""
    from k_diffusion import sampling as upstream

    denoiser, latent, change_map, noise = case_inputs(case)
    sampling = fork.sampling if fork is not None else upstream
    settings = dict(noise=noise, strength=case.strength, compat="comfyui")
    run = dict(extra_args={"cond": None}, disable=True)
    with torch.no_grad():
        if case.name in ("dpm_fast", "dpm_adaptive"):
            # The range the user hands these two: the schedule's first and last non-zero levels.
            sigma_min, sigma_max = sigmas[-2], sigmas[0]
            dd = DifferentialDenoiser(denoiser, latent, change_map, sigma_min=sigma_min, sigma_max=sigma_max, **settings)
            model = Forked(dd, Guider(fork, denoiser, case.prediction)) if fork is not None else dd
            torch.manual_seed(0)
            if case.name == "dpm_fast":
                return sampling.sample_dpm_fast(model, dd.noisy_latent(), sigma_min, sigma_max, STEPS, **run)
            return sampling.sample_dpm_adaptive(model, dd.noisy_latent(), sigma_min, sigma_max, **run)
        dd = DifferentialDenoiser(denoiser, latent, change_map, sigmas=sigmas, **settings)
        model = Forked(dd, Guider(fork, denoiser, case.prediction)) if fork is not None else dd
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
    """ComfyUI's model wrap (a CFGGuider over a BaseModel), calling ``denoiser`` itself.

    ``inner_model`` is a BaseModel with ComfyUI's own ``model_sampling`` and
    ``scale_latent_inpaint``; ``model_patcher`` hands out that model_sampling."""

    def __init__(self, comfy, denoiser, prediction):
        mixin = comfy.model_sampling.EPS if prediction == "eps" else comfy.model_sampling.V_PREDICTION
        sampling = type("ModelSampling", (comfy.model_sampling.ModelSamplingDiscrete, mixin), {})()
        sampling.set_sigmas(denoiser.sigmas)  # the toy model's training levels
        base = types.SimpleNamespace(model_sampling=sampling)
        base.scale_latent_inpaint = types.MethodType(comfy.model_base.BaseModel.scale_latent_inpaint, base)
        self.denoiser, self.inner_model = denoiser, base
        self.model_patcher = types.SimpleNamespace(get_model_object=lambda name: getattr(base, name))

    def __call__(self, x, sigma, model_options={}, seed=None, **kwargs):
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
    guider = Guider(comfy, ideal_denoiser(case.prediction, quantize=case.quantize), case.prediction)
    total = STEPS if case.denoise >= 1 else int(STEPS / case.denoise)
    sigmas = comfy.samplers.calculate_sigmas(guider.inner_model.model_sampling, case.scheduler, total)
    return sigmas[-(STEPS + 1) :].float()


def comfyui_named_schedule(comfy, name: str, steps: int):
    """ComfyUI's calculate_sigmas for the ideal denoiser's training levels."""
    guider = Guider(comfy, ideal_denoiser(), "eps")
    return comfy.samplers.calculate_sigmas(guider.inner_model.model_sampling, name, steps).float()


def comfyui_start(comfy, case: Case, sigmas):
    """KSAMPLER.sample's start: the noise scaled by ComfyUI's model_sampling (sqrt(1 + sigma^2)
    at its max-denoise start), plus the latent."""
    denoiser, latent, _, noise = case_inputs(case)
    guider = Guider(comfy, denoiser, case.prediction)
    sampler = comfy.samplers.ksampler(case.name)
    return guider.inner_model.model_sampling.noise_scaling(sigmas[0], noise, latent, sampler.max_denoise(guider, sigmas))


def comfyui_run(comfy, case: Case, sigmas):
    """ComfyUI's node and KSAMPLER.sample, as its KSampler node drives them."""
    denoiser, latent, change_map, noise = case_inputs(case)
    guider = Guider(comfy, denoiser, case.prediction)
    (patched,) = comfy.node.execute(Patcher(), strength=case.strength)
    mask = comfy.helpers.prepare_mask(change_map, noise.shape, "cpu")
    extra_args = {"model_options": patched.model_options}
    torch.manual_seed(0)
    with torch.no_grad():
        return comfy.samplers.ksampler(case.name).sample(
            guider, sigmas, extra_args, None, noise, latent_image=latent, denoise_mask=mask, disable_pbar=True
        )
