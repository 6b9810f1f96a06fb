"""compat="comfyui" against ComfyUI's own code, loaded at run time.

CI cannot download ComfyUI and its code is never committed here, so this module reads
a ComfyUI source tree from the folder named by ``KDIFF_COMFYUI_SRC`` and skips where
that is unset. Measured against Comfy-Org/ComfyUI a125cd84 (2025-10-11), the first
release of the node's ``strength`` input in the V3 schema; get it with

    git clone https://github.com/Comfy-Org/ComfyUI /work/comfyui-src
    git -C /work/comfyui-src checkout a125cd84
    KDIFF_COMFYUI_SRC=/work/comfyui-src python -m pytest -q -s tests/test_comfyui_source.py

ComfyUI's side runs its own ``DifferentialDiffusion`` node, ``KSAMPLER.sample`` (the
start noise, ``KSamplerX0Inpaint``'s blend), its schedulers, ``prepare_mask`` and
``model_sampling.py``, with its fork of the k-diffusion samplers. Stubbed, as
infrastructure only: the node-registration schema (``comfy_api.latest``, which pulls
in video libraries), the model patcher (a dict of model options) and the guider,
which calls the same toy k-diffusion denoiser that our wrapper wraps. Device
management is ComfyUI's own, told ``--cpu``.

Our side runs the wrapper with upstream k-diffusion's samplers, as users do, and once
more with ComfyUI's fork of them, which isolates the wrapper: the fork ends ``lms``
with ``x = denoised`` and queries ``dpmpp_sde``'s Brownian tree a few ulps away from
upstream, so those two are compared under the fork only. ``-s`` prints each case's
largest difference.
"""

import importlib
import os
import sys
import types

import pytest
import torch

from kdiff_differential import DifferentialDenoiser

from conftest import SAMPLERS, SIZE, ideal_denoiser, smooth_images

SOURCE = os.environ.get("KDIFF_COMFYUI_SRC")
pytestmark = pytest.mark.skipif(
    not SOURCE,
    reason="KDIFF_COMFYUI_SRC is not set: point it at a ComfyUI source tree (Comfy-Org/ComfyUI a125cd84) "
    "to compare compat='comfyui' with ComfyUI's own code; CI cannot download it",
)

STEPS = 20
TOLERANCE = 1e-5
# Where ComfyUI's fork of the samplers differs from upstream k-diffusion (not the wrapper).
FORK_ONLY = ("lms", "dpmpp_sde")


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI's modules, imported from KDIFF_COMFYUI_SRC."""
    if not os.path.isfile(os.path.join(SOURCE, "comfy", "samplers.py")):
        pytest.fail(f"KDIFF_COMFYUI_SRC={SOURCE!r} holds no comfy/samplers.py; give the root of a ComfyUI checkout")
    if SOURCE not in sys.path:
        sys.path.append(SOURCE)  # appended: ComfyUI's top-level names must not shadow ours
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


def schedule(comfy, guider, scheduler, denoise):
    """ComfyUI's KSampler.set_steps: steps / denoise steps, of which the last STEPS are run."""
    total = STEPS if denoise >= 1 else int(STEPS / denoise)
    sigmas = comfy.samplers.calculate_sigmas(guider.inner_model.model_sampling, scheduler, total)
    return sigmas[-(STEPS + 1) :].float()


def comfyui_run(comfy, guider, name, latent, change_map, noise, sigmas, strength):
    """ComfyUI's node and KSAMPLER.sample, as its KSampler node drives them."""
    (patched,) = comfy.node.execute(Patcher(), strength=strength)
    mask = comfy.helpers.prepare_mask(change_map, noise.shape, "cpu")
    extra_args = {"model_options": patched.model_options}
    torch.manual_seed(0)
    return comfy.samplers.ksampler(name).sample(
        guider, sigmas, extra_args, None, noise, latent_image=latent, denoise_mask=mask, disable_pbar=True
    )


def our_run(comfy, guider, name, latent, change_map, noise, sigmas, strength, fork):
    """DifferentialDenoiser(compat="comfyui") under upstream k-diffusion or ComfyUI's fork."""
    from k_diffusion import sampling as upstream

    sampling = comfy.sampling if fork else upstream
    settings = dict(noise=noise, strength=strength, compat="comfyui")
    if name in ("dpm_fast", "dpm_adaptive"):
        # The range the user hands these two: the schedule's first and last non-zero levels.
        sigma_min, sigma_max = sigmas[-2], sigmas[0]
        dd = DifferentialDenoiser(guider.denoiser, latent, change_map, sigma_min=sigma_min, sigma_max=sigma_max, **settings)
        model = Forked(dd, guider) if fork else dd
        run = dict(extra_args={"cond": None}, disable=True)
        torch.manual_seed(0)
        if name == "dpm_fast":
            return sampling.sample_dpm_fast(model, dd.noisy_latent(), sigma_min, sigma_max, STEPS, **run)
        return sampling.sample_dpm_adaptive(model, dd.noisy_latent(), sigma_min, sigma_max, **run)
    dd = DifferentialDenoiser(guider.denoiser, latent, change_map, sigmas=sigmas, **settings)
    model = Forked(dd, guider) if fork else dd
    torch.manual_seed(0)
    return getattr(sampling, f"sample_{name}")(model, dd.noisy_latent(), sigmas, extra_args={"cond": None}, disable=True)


def compare(comfy, name, *, prediction="eps", quantize=False, strength=1.0, scheduler="karras", denoise=1.0,
            batch=1, map_size=40):
    """Largest |ours - ComfyUI's| for one case, under upstream samplers and under the fork."""
    denoiser = ideal_denoiser(prediction, quantize=quantize)
    guider = Guider(comfy, denoiser, prediction)
    latent = smooth_images(batch, seed=3)
    g = torch.Generator().manual_seed(5)
    change_map = torch.rand(batch, 1, map_size, map_size, generator=g)  # one map per image
    noise = torch.randn(latent.shape, generator=g)
    sigmas = schedule(comfy, guider, scheduler, denoise)
    with torch.no_grad():
        theirs = comfyui_run(comfy, guider, name, latent, change_map, noise, sigmas, strength)
        diffs = {}
        for fork in (False, True):
            if fork or name not in FORK_ONLY:
                ours = our_run(comfy, guider, name, latent, change_map, noise, sigmas, strength, fork)
                diffs["fork" if fork else "upstream"] = (ours - theirs).abs().max().item()
    case = f"{name} {prediction} quantize={quantize} strength={strength} {scheduler} denoise={denoise} batch={batch}"
    print(f"\n{case}: " + ", ".join(f"{key} {value:.1e}" for key, value in diffs.items()), end="")
    return diffs


def assert_parity(diffs):
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_matches_comfyui(comfy, name):
    """Full denoise (ComfyUI's max-denoise start), interpolating CompVisDenoiser, karras."""
    assert_parity(compare(comfy, name))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("strength", [0.0, 0.35, 0.6, 1.0])
def test_predictions_quantize_and_strengths_match_comfyui(comfy, prediction, quantize, strength):
    assert_parity(compare(comfy, "euler", prediction=prediction, quantize=quantize, strength=strength))


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_range_samplers_on_a_schedule_ending_above_the_models_sigma_min(comfy, name, prediction):
    """ComfyUI's `simple` schedule ends well above the model's sigma_min."""
    assert_parity(compare(comfy, name, prediction=prediction, scheduler="simple"))


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m", "dpmpp_sde"])
@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_batches_with_per_image_maps_match_comfyui(comfy, name, denoise):
    assert_parity(compare(comfy, name, strength=0.6, scheduler="normal", denoise=denoise, batch=3, map_size=SIZE * 3))


def test_the_source_is_the_node_with_strength(comfy):
    """What this module measures against: the node with its strength input."""
    import inspect

    assert "strength and strength < 1" in inspect.getsource(comfy.node.forward)
