"""compat="diffusers" against the diffusers community Differential Diffusion pipelines.

``tests/data/diffusers_golden.pt`` holds what the SDXL, SD3, Flux.1 and Z-Image
pipelines' own code (huggingface/diffusers ``examples/community`` at the commit the file
names) produced on tiny random models with graded keep-maps (a gradient, halves, 8-bit
levels, exact 0 and 1) at 5 and 8 steps: every CI run checks our side against it, from
the pipelines' own latent and noise (``diffusers_harness.py``). With
``KDIFF_DIFFUSERS_COMMUNITY`` naming that folder, the live tests run the pipelines again
(``tests/make_diffusers_golden.py`` says how to get it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diffusers_harness import CASES, DIFFUSERS_COMMIT, MAPS, PIPELINES, STEPS, case_id, fingerprint, load_community, our_run, pipeline_run

from kdiff_differential import DifferentialDenoiser

GOLDEN = torch.load(Path(__file__).parent / "data" / "diffusers_golden.pt", weights_only=True)
TOLERANCE = 1e-5  # relative to the result's largest value
SOURCE = os.environ.get("KDIFF_DIFFUSERS_COMMUNITY")


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.fixture(scope="module", params=list(PIPELINES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(pipeline name, its tiny model's folder, the folder loaded by our loader)."""
    from kdiff_differential import load_pipeline

    name = request.param
    folder = PIPELINES[name][2](tmp_path_factory.mktemp(name))
    return name, folder, load_pipeline(folder)


def test_the_golden_file_is_the_pipelines_and_covers_every_case() -> None:
    assert GOLDEN["commit"] == DIFFUSERS_COMMIT
    assert sorted(GOLDEN["cases"]) == sorted(case_id(*case) for case in CASES)
    assert sorted(GOLDEN["maps"]) == sorted(MAPS)
    for name, keep in MAPS.items():
        assert torch.equal(GOLDEN["maps"][name], keep), name
    levels = GOLDEN["maps"]["levels"]
    assert (levels == 0).any() and (levels == 1).any() and ((levels > 0) & (levels < 1)).sum() > 100


@pytest.mark.slow
def test_each_pipeline_is_reproduced_from_its_frozen_outputs(family) -> None:
    """Every map and step count of the pipeline: our Euler run under compat="diffusers"
    equals the pipeline's final latent to 1e-5. The step clock's binary rule, the
    closest the wrapper had before, is far from it: the maps are graded, the test sees
    the rule."""
    name, folder, model = family
    shared = GOLDEN["pipelines"][name]
    # The seeded tiny network is the one the outputs were frozen from.
    assert fingerprint(folder) == pytest.approx(shared["fingerprint"], rel=1e-9)
    for map_name, keep in MAPS.items():
        for steps in STEPS:
            frozen = {**shared, **GOLDEN["cases"][case_id(name, map_name, steps)]}
            difference = relative(our_run(model, name, frozen, keep), frozen["result"])
            assert difference <= TOLERANCE, (map_name, steps, difference)
    frozen = {**shared, **GOLDEN["cases"][case_id(name, "gradient", 8)]}
    step_clock = our_run(model, name, frozen, MAPS["gradient"], clock="step", release="binary")
    assert relative(step_clock, frozen["result"]) > 0.2  # measured 0.25 (Flux.1) to 0.54 (SDXL)


def pipeline_loop(denoiser, latent, noise, keep, sigmas, rule, steps=None):
    """The pipelines' loop, restated: Euler, the keep-map thresholded by step index
    against arange(N)/N, the original noised to the step blended in before each call
    i >= 1 ("pre", SDXL and SD3) or after each step but the pipeline's last ("post",
    Flux.1 and Z-Image)."""
    n = len(sigmas) - 1 if steps is None else steps
    masks = (keep > (torch.arange(n, dtype=torch.float32) / n)[:, None, None, None]).float()
    x = latent + noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        if rule == "pre" and i > 0:
            x = (latent + noise * sigmas[i]) * masks[i] + x * (1 - masks[i])
        denoised = denoiser(x, sigmas[i].reshape(1))
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
        if rule == "post" and i < n - 1:
            x = (latent + noise * sigmas[i + 1]) * masks[i] + x * (1 - masks[i])
    return x


class Named(torch.nn.Module):
    """A denoiser that names its diffusers pipeline, as the model families' do."""

    def __init__(self, inner, pipeline: str) -> None:
        super().__init__()
        self.inner_model, self.diffusers_pipeline = inner, pipeline

    def forward(self, x, sigma, **kwargs):
        return self.inner_model(x, sigma, **kwargs)


@pytest.mark.parametrize("pipeline, rule", [(None, "pre"), ("sdxl", "pre"), ("sd3", "pre"), ("flux", "post"), ("z-image", "post")])
@pytest.mark.parametrize("steps", [1, 2, 5, 8])
def test_the_rule_is_the_pipelines_loop_on_a_closed_form_model(ideal, latent, pipeline, rule, steps) -> None:
    """A denoiser without a pipeline name (any UNet) gets SDXL's rule; each family's
    name picks its pipeline's. Levels that fall on a threshold (k/255 = i/N) included;
    Z-Image's loop has one more step, at t = 0, than the schedule."""
    import k_diffusion as K

    grey = torch.arange(256, dtype=torch.float32)[torch.randperm(256, generator=torch.Generator().manual_seed(1))]
    keep = (grey.reshape(16, 16) / 255)[None, None]
    sigmas = K.sampling.get_sigmas_karras(steps, 0.03, 14.6)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(4))
    denoiser = ideal if pipeline is None else Named(ideal, pipeline)
    dd = DifferentialDenoiser(denoiser, latent, keep, sigmas=sigmas, noise=noise, keep_map=True, compat="diffusers")
    ours = K.sampling.sample_euler(dd, dd.noisy_latent(), sigmas, disable=True)
    expected = pipeline_loop(ideal, latent, noise, keep, sigmas, rule, steps + 1 if pipeline == "z-image" else None)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_on_another_sampler_a_call_is_masked_as_the_level_above_it(ideal, latent) -> None:
    """Between two levels (a second-order sampler's extra call) the mask is the upper
    level's: the same rule on the same grid."""
    import k_diffusion as K

    sigmas = K.sampling.get_sigmas_karras(5, 0.03, 14.6)
    keep = torch.linspace(0, 1, 16).expand(16, 16)
    dd = DifferentialDenoiser(ideal, latent, keep, sigmas=sigmas, keep_map=True, compat="diffusers")
    for upper, lower in zip(sigmas[:-2], sigmas[1:-1]):
        torch.testing.assert_close(dd.mask((upper * lower).sqrt()), dd.mask(upper), rtol=0, atol=0)
        assert not torch.equal(dd.mask(lower), dd.mask(upper))


@pytest.mark.parametrize("settings, says", [
    (dict(strength=0.5), "strength=0.5 must be 1"),
    (dict(sigmas=None, sigma_min=0.03, sigma_max=14.6), "sigma_min=/sigma_max= runs a noise range"),
])
def test_what_the_pipelines_cannot_do_is_refused(ideal, latent, settings, says) -> None:
    import k_diffusion as K

    arguments = {"sigmas": K.sampling.get_sigmas_karras(5, 0.03, 14.6), "compat": "diffusers", **settings}
    with pytest.raises(ValueError, match=says):
        DifferentialDenoiser(ideal, latent, torch.ones(16, 16), **arguments)


def test_an_unknown_pipeline_name_is_refused(ideal, latent) -> None:
    import k_diffusion as K

    with pytest.raises(ValueError, match="diffusers_pipeline must be one of .*got 'kolors'"):
        DifferentialDenoiser(Named(ideal, "kolors"), latent, torch.ones(16, 16), sigmas=K.sampling.get_sigmas_karras(5, 0.03, 14.6),
                             compat="diffusers")


live = pytest.mark.skipif(
    not SOURCE,
    reason="KDIFF_DIFFUSERS_COMMUNITY is not set: point it at huggingface/diffusers' examples/community "
    f"(at {DIFFUSERS_COMMIT}) to run the pipelines live; CI cannot download them (the frozen outputs run instead)",
)


@live
def test_each_pipeline_live_equals_ours_and_its_frozen_outputs(family) -> None:
    name, folder, model = family
    pipe = load_community(SOURCE, name, folder)
    for map_name, keep in MAPS.items():
        for steps in STEPS:
            run = pipeline_run(pipe, name, keep, steps)
            frozen = GOLDEN["cases"][case_id(name, map_name, steps)]
            assert relative(our_run(model, name, run, keep), run["result"]) <= TOLERANCE, (map_name, steps)
            assert relative(run["result"], frozen["result"]) <= TOLERANCE, (map_name, steps)


def test_the_invokeai_peer_is_its_loop_on_a_closed_form_model(ideal, latent) -> None:
    """samplers/peers.py's InvokeAI rule against a loop restating it: Euler, and after each
    step the pixels with mask < t_prev + 1e-4 set to the original noised to t_prev, with
    t our timestep clock (0 at the schedule's end)."""
    from kdiff_differential.core.schedules import make_sigmas
    from samplers.peers import INVOKEAI_EPSILON, peer_edit

    change = torch.linspace(0, 1, 16).expand(16, 16).clone()
    ours = peer_edit("invokeai", ideal, latent, change, "euler", 6, seed=3)
    sigmas = make_sigmas(ideal, 6, "karras", 1.0)
    reference = DifferentialDenoiser(ideal, latent, change, sigmas=sigmas, generator=torch.Generator().manual_seed(3))
    noise, t = reference.noise, [float(reference.clock(s.reshape(1))) if s > 0 else 0.0 for s in sigmas]
    x = latent + noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - ideal(x, sigmas[i].reshape(1))) / sigmas[i]
        held = (change < t[i + 1] + INVOKEAI_EPSILON).float()
        x = (latent + noise * sigmas[i + 1]) * held + x * (1 - held)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[..., 0], latent[..., 0], rtol=0, atol=1e-6)  # strength 0 keeps the original


def test_the_banding_benchmark_takes_the_peers_as_rows(capsys) -> None:
    from samplers.banding import main

    assert main(["--samplers", "euler", "--steps", "3", "--seeds", "0", "--release", "diffusers-pre,diffusers-post"]) == 0
    printed = capsys.readouterr().out
    assert "| sampler | diffusers-pre 3 | diffusers-post 3 |" in printed


@pytest.mark.slow
def test_the_command_line_takes_compat_diffusers(image_file: Path, tmp_path: Path) -> None:
    """--compat diffusers runs an edit; with a range sampler or a blend strength, which
    the pipelines have no counterpart of, it is one line and exit status 2."""
    from conftest import kdiff, pixels

    out = tmp_path / "out.png"
    done = kdiff("--image", str(image_file), "--map", "gradient-x", "--compat", "diffusers", "--sampler", "euler", "--steps", "5",
                 "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pixels(out).shape == pixels(image_file).shape
    for option, says in ((["--sampler", "dpm_fast"], "--sampler dpm_fast runs a noise range"), (["--strength", "0.5"], "--strength 0.5 must be 1")):
        refused = kdiff("--image", str(image_file), "--map", "gradient-x", "--compat", "diffusers", *option, "--out", str(out), cwd=tmp_path)
        assert refused.returncode == 2 and says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
