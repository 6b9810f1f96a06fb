"""Release rules against the binary one: smooth (the wrapper's default) and faithful (differential_edit's), their weights, guarantees, banding and fidelity."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from k_diffusion import sampling

from conftest import SCHEDULED, SIZE, build, smooth_images
from kdiff_differential import DifferentialDenoiser
from kdiff_differential.core.release import RANGE_RAMP


@pytest.fixture(scope="module")
def sigmas(ideal):
    return ideal.get_sigmas(6)


def test_the_weight_eases_a_pixel_in_over_the_step_before_its_release(ideal, latent, gradient_map, sigmas):
    """At a call between two levels, m = clamp((s - tau_lo) / (tau_hi - tau_lo), 0, 1),
    written out by hand from the clock; 1 wherever the binary rule frees the pixel."""
    dd = build(ideal, latent, gradient_map, sigmas, release="smooth")
    binary = build(ideal, latent, gradient_map, sigmas, release="binary")
    sigma = (sigmas[2] * sigmas[3]).sqrt()  # between levels 2 and 3
    tau_hi, tau_lo = dd.clock(sigma.reshape(1)), dd.clock(sigmas[3:4])
    s = gradient_map.reshape(1, 1, SIZE, SIZE)
    expected = ((s - tau_lo) / (tau_hi - tau_lo)).clamp(0, 1)
    mask = dd.mask(sigma.item())
    assert torch.allclose(mask, expected, atol=1e-5)
    assert 0 < mask[(mask > 0) & (mask < 1)].numel()  # some pixels are part-way in
    assert mask[binary.mask(sigma.item()) == 1].eq(1).all()


@pytest.mark.parametrize("ulps", [-2, 1, 2, 8])
def test_a_call_an_ulp_off_a_level_weighs_as_at_the_level(ideal, latent, gradient_map, sigmas, ulps):
    """DPM2-ancestral and DPM++ 2S-ancestral call at sqrt(sigma_i * sigma_down), which is
    sigma_{i+1} up to rounding: a few ulps either side of the level, the weights are the
    level's (one ulp above, the ramp once collapsed into a hard edge)."""
    dd = build(ideal, latent, gradient_map, sigmas, release="smooth")
    level = sigmas[3:4].float()
    nudged = level.clone()
    for _ in range(abs(ulps)):
        nudged = torch.nextafter(nudged, torch.tensor([float("inf") if ulps > 0 else 0.0]))
    at, off = dd.mask(level), dd.mask(nudged)
    assert 0 < at[(at > 0) & (at < 1)].numel()  # a ramp to keep, not all 0 or 1
    assert (at - off).abs().max() < 1e-3


def test_the_ancestral_midpoint_call_lands_on_the_next_level():
    """The fact the slack is for, on a karras schedule of 20 steps."""
    sigmas = sampling.get_sigmas_karras(20, 0.01, 10.0)
    mids = []
    for i in range(len(sigmas) - 2):
        down, _ = sampling.get_ancestral_step(sigmas[i], sigmas[i + 1])
        mids.append(sigmas[i].log().lerp(down.log(), 0.5).exp())  # as sample_dpm_2_ancestral computes it
    mids = torch.stack(mids)
    assert torch.allclose(mids, sigmas[1:-1], rtol=1e-6, atol=0)
    assert (mids > sigmas[1:-1]).any()  # and some fall just above it


def test_compat_comfyui_is_always_binary(ideal, latent, gradient_map, sigmas):
    dd = build(ideal, latent, gradient_map, sigmas, compat="comfyui", release="smooth")
    assert dd.release == "binary"
    for sigma in sigmas[:-1]:
        assert ((dd.mask(sigma.item()) == 0) | (dd.mask(sigma.item()) == 1)).all()


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.03, max_value=14.0), st.sampled_from(["timestep", "sigma", "step"]))
def test_the_weight_is_monotone_in_strength_keeps_zero_and_frees_one(sigma, threshold):
    from conftest import ideal_denoiser

    ideal = ideal_denoiser()
    strengths = torch.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)
    dd = build(ideal, smooth_images(1, seed=2), strengths, ideal.get_sigmas(5), clock=threshold)
    mask = dd.mask(sigma).flatten()
    assert (mask.diff() >= 0).all()
    assert mask[0] == 0  # strength 0 is never released
    assert mask[-1] == 1  # strength 1 is free from the first call


def test_range_samplers_ease_in_over_a_fixed_width_of_the_ramp(ideal, latent, gradient_map):
    dd = DifferentialDenoiser(ideal, latent, gradient_map, sigma_min=0.1, sigma_max=10.0,
                              generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([1.0])
    tau = dd.clock(sigma)
    expected = ((gradient_map - (tau - RANGE_RAMP)) / RANGE_RAMP).clamp(0, 1)
    assert torch.allclose(dd.mask(1.0)[0, 0], expected, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "lms"])
def test_smooth_equals_binary_when_every_strength_sits_on_a_schedule_level(ideal, latent, sigmas, sampler):
    """A strength equal to the clock at a level is eased in over no call at all: both
    rules free it at the same call, so the runs agree."""
    probe = build(ideal, latent, torch.zeros(SIZE, SIZE), sigmas)
    levels = probe.clock(sigmas[:-1]).clamp(0, 1)  # tau at each non-zero level
    index = torch.arange(SIZE * SIZE).reshape(SIZE, SIZE) % len(levels)
    on_levels = levels[index]
    runs = {}
    for release in ("smooth", "binary"):
        dd = build(ideal, latent, on_levels, sigmas, release=release)
        runs[release] = getattr(sampling, f"sample_{sampler}")(dd, dd.noisy_latent(), sigmas, disable=True)
    assert torch.allclose(runs["smooth"], runs["binary"], atol=1e-5)


@pytest.mark.parametrize("sampler", SCHEDULED)
def test_kept_pixels_stay_exact_under_smooth_release(ideal, latent, gradient_map, sigmas, sampler):
    dd = build(ideal, latent, gradient_map, sigmas, release="smooth")
    torch.manual_seed(0)
    out = getattr(sampling, f"sample_{sampler}")(dd, dd.noisy_latent(), sigmas, disable=True)
    assert torch.allclose(out[..., 0], latent[..., 0], atol=1e-5)


def test_smooth_release_bands_less_than_binary_at_5_steps():
    """The banding benchmark's own measure, on a small smooth scene."""
    from samplers.banding import measure

    table = measure(["euler", "dpmpp_2m"], [5], height=64, width=160)
    for sampler in ("euler", "dpmpp_2m"):
        assert table["smooth", sampler, 5] < table["binary", sampler, 5] / 2


def test_the_benchmark_measures_fidelity_against_the_converged_edit():
    """Euler converges to the reference: DAM and the calibration gap shrink with the
    steps; binary release changes too little where smooth changes too much (both
    measured, not assumed small)."""
    import numpy as np

    from kdiff_differential.maps.presets import preset_map
    from samplers.banding import fidelity_table, measure, smooth_scene
    from samplers.metrics import change_curve

    images: dict = {}
    table = fidelity_table(["euler"], [5, 20], seeds=[0], height=64, width=160, images=images)
    for release in ("smooth", "binary"):
        few, many = table[release, "euler", 5], table[release, "euler", 20]
        assert many["calibration"] < few["calibration"] and many["dam"] < few["dam"] and few["cam"] < many["cam"] <= 1
    reference: dict = {}
    measure(["euler"], [100], ["smooth"], height=64, width=160, images=reference)
    scene, strength = smooth_scene(64, 160), preset_map("gradient-x", 64, 160).numpy()
    converged = change_curve(reference["smooth", "euler", 100], scene, strength)
    signed = {release: np.nanmean(change_curve(images[release, "euler", 5], scene, strength) - converged) for release in ("smooth", "binary")}
    assert signed["smooth"] > 0 > signed["binary"]
    # Relative banding: the jumps of the edit's curve minus the same seed's converged curve.
    for release in ("smooth", "binary"):
        excess = change_curve(images[release, "euler", 5], scene, strength) - converged
        excess = excess[~np.isnan(excess)]  # the levels the map uses, in order
        assert table[release, "euler", 5]["relative_banding"] == pytest.approx(np.abs(np.diff(excess)).max())
    assert table["smooth", "euler", 5]["relative_banding"] < table["binary", "euler", 5]["relative_banding"] / 2


def test_the_banding_command_prints_five_titled_tables(capsys):
    from samplers.banding import main

    assert main(["--samplers", "euler", "--steps", "3", "--release", "smooth", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("| sampler | smooth 3 |") == 5
    titles = [line for line in out.splitlines() if line and not line.startswith("|")]
    assert [title.split(":")[0] for title in titles] == ["Banding", "Relative banding", "CAM", "DAM", "Calibration"]
    assert all("8-bit levels" in title for title in titles if not title.startswith("CAM"))  # the unit
    assert all(("lower is better" in title) != title.startswith("CAM") for title in titles)  # the direction
    assert "higher is better" in titles[2]


def test_the_banding_command_names_its_default_release_and_says_what_it_wrote(capsys, tmp_path):
    from samplers.banding import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "faithful, the default" in " ".join(capsys.readouterr().out.split())
    figure = tmp_path / "bands.png"
    assert main(["--samplers", "euler", "--steps", "2", "--release", "faithful", "--seeds", "0", "--figure", str(figure)]) == 0
    assert f"wrote {figure}" in capsys.readouterr().out.splitlines() and figure.stat().st_size > 0


# The faithful release: eased in over the same step, linearly in sigma**3; Heun's second call.


def test_the_faithful_weight_is_linear_in_sigma_cubed_over_the_step(ideal, latent, gradient_map, sigmas):
    """At a call between two levels, m = clamp((r^3 - lo^3) / (sigma^3 - lo^3), 0, 1), r the
    pixel's release sigma, written out by hand; 1 wherever binary frees, 0 at strength 0."""
    from kdiff_differential.core.release import FAITHFUL_POWER

    dd = build(ideal, latent, gradient_map, sigmas, release="faithful")
    binary = build(ideal, latent, gradient_map, sigmas, release="binary")
    sigma = (sigmas[2] * sigmas[3]).sqrt()
    r, lo = dd.release_sigma.double().clamp(min=0), sigmas[3].double()
    expected = ((r**FAITHFUL_POWER - lo**FAITHFUL_POWER) / (sigma.double() ** FAITHFUL_POWER - lo**FAITHFUL_POWER)).clamp(0, 1)
    mask = dd.mask(sigma.item())
    assert dd.release == "faithful"
    assert torch.allclose(mask.double(), expected, atol=1e-5)
    assert 0 < mask[(mask > 0) & (mask < 1)].numel()
    assert mask[binary.mask(sigma.item()) == 1].eq(1).all()
    assert mask[gradient_map.reshape(mask.shape) == 0].eq(0).all()
    # Eased in later than smooth's tau ramp: a half-freed pixel gets less than smooth gives it.
    smooth = build(ideal, latent, gradient_map, sigmas, release="smooth").mask(sigma.item())
    between = (mask > 0) & (mask < 1)
    assert (mask[between] <= smooth[between] + 1e-6).all() and (mask[between] < smooth[between]).any()


@pytest.mark.parametrize("sampler", SCHEDULED)
def test_kept_pixels_stay_exact_under_faithful_release(ideal, latent, gradient_map, sigmas, sampler):
    dd = build(ideal, latent, gradient_map, sigmas, release="faithful", sampler=sampler)
    torch.manual_seed(0)
    out = getattr(sampling, f"sample_{sampler}")(dd, dd.noisy_latent(), sigmas, disable=True)
    assert torch.allclose(out[..., 0], latent[..., 0], atol=1e-5)


def test_heuns_second_call_is_masked_as_at_the_steps_midpoint(ideal, latent, gradient_map, sigmas):
    """Told the sampler is Heun, a call below the previous one (Heun's second, at the next
    level) is masked as at the step's geometric midpoint; the next step's first call, at
    the same sigma, as at its own. Calls keep the state; ``mask()`` does not."""
    dd = build(ideal, latent, gradient_map, sigmas, release="faithful", sampler="heun")
    calls = [sigmas[2], sigmas[3], sigmas[3], sigmas[4]]  # step 2's calls, step 3's calls
    chosen = torch.cat([dd.rule.call_sigma(level.reshape(1)) for level in calls])
    midpoints = [(sigmas[2] * sigmas[3]).sqrt(), (sigmas[3] * sigmas[4]).sqrt()]
    assert torch.allclose(chosen, torch.stack([sigmas[2], midpoints[0], sigmas[3], midpoints[1]]))
    second, first = dd.mask(chosen[1].item()), dd.mask(chosen[2].item())
    assert (second <= first).all() and (second < first).any()  # the second call frees less
    fresh = build(ideal, latent, gradient_map, sigmas, release="faithful", sampler="heun")
    fresh(fresh.noisy_latent(sigmas[2].item()), sigmas[2].reshape(1))
    assert torch.equal(fresh.rule.previous, sigmas[2].reshape(1))
    fresh.mask(sigmas[4].item())
    assert torch.equal(fresh.rule.previous, sigmas[2].reshape(1))


def test_dpm2_ancestrals_second_call_is_masked_three_quarters_up_its_step(ideal, latent, gradient_map, sigmas):
    """DPM2-ancestral's second call (at the next level) is masked as at
    sigma_i**0.75 * sigma_i+1**0.25, where it does not band at 5 steps; the first call of
    the next step, at the same level, as at that level exactly."""
    dd = build(ideal, latent, gradient_map, sigmas, release="faithful", sampler="dpm_2_ancestral")
    calls = [sigmas[1], sigmas[2], sigmas[2]]
    chosen = torch.cat([dd.rule.call_sigma(level.reshape(1)) for level in calls])
    three_quarters = sigmas[1].double() ** 0.75 * sigmas[2].double() ** 0.25
    assert chosen[0] == sigmas[1] and chosen[2] == sigmas[2]
    assert torch.isclose(chosen[1].double(), three_quarters, rtol=1e-6)


@pytest.mark.parametrize(
    ("steps", "sampler", "rule"),
    [(1, "euler", "smooth"), (3, "euler", "smooth"), (3, None, "smooth"), (4, "euler", "faithful"), (4, None, "faithful"),
     (1, "heun", "smooth"), (2, "heun", "faithful"), (2, "dpm_2_ancestral", "faithful")],
)
def test_the_faithful_release_is_the_smooth_rule_below_four_steps_but_for_heuns_family(ideal, latent, gradient_map, steps, sampler, rule):
    """Below FAITHFUL_MIN_STEPS steps a step spans most of the noise range, where the
    sigma**3 ramp loses the map; Heun's family keeps faithful from 2 steps (smooth bands
    it there), and at 1 step makes no second call."""
    from kdiff_differential.core.release import FAITHFUL_MIN_STEPS

    assert FAITHFUL_MIN_STEPS == 4
    schedule = ideal.get_sigmas(steps).float()
    assert build(ideal, latent, gradient_map, schedule, release="faithful", sampler=sampler).release == rule


def test_the_faithful_release_follows_the_sampler_name_and_falls_back_on_ranges(ideal, latent, gradient_map, sigmas):
    assert build(ideal, latent, gradient_map, sigmas, release="faithful", sampler="Heun").rule.previous is not None
    assert build(ideal, latent, gradient_map, sigmas, release="faithful", sampler="dpm_2").rule.previous is None
    with pytest.raises(ValueError, match="unknown sampler 'warp'"):
        build(ideal, latent, gradient_map, sigmas, release="faithful", sampler="warp")
    ranged = DifferentialDenoiser(ideal, latent, gradient_map, sigma_min=0.1, sigma_max=10.0, release="faithful",
                                  generator=torch.Generator().manual_seed(0))
    assert ranged.release == "smooth"  # no levels to ease between: the smooth rule's fixed width
    assert build(ideal, latent, gradient_map, sigmas, release="faithful", compat="comfyui").release == "binary"


def test_differential_edit_releases_faithfully_told_the_sampler(ideal, latent, gradient_map):
    from kdiff_differential.core.sampling import differential_edit

    for sampler, tracks in (("heun", True), ("euler", False)):
        edit = differential_edit(ideal, latent, gradient_map, sampler=sampler, steps=4)
        assert edit.wrapper.release == "faithful"
        assert (edit.wrapper.rule.previous is not None) == tracks


def test_the_banding_scenes_are_the_landscape_reordered():
    import numpy as np

    from samplers.banding import scene_image, smooth_scene

    landscape = smooth_scene(24, 48)
    assert np.array_equal(scene_image("mirrored", 24, 48), landscape[:, ::-1])
    assert np.array_equal(scene_image("upside-down", 24, 48), landscape[::-1])
    assert np.array_equal(scene_image("recoloured", 24, 48), landscape[..., ::-1])
    with pytest.raises(ValueError, match="scene must be one of landscape, mirrored"):
        scene_image("sideways")


@pytest.mark.slow
def test_dpm2s_faithful_ramp_is_linear_in_sigma_where_the_cube_bands(monkeypatch):
    """Issue 31: DPM2 at 5 steps banded above 8 on a scene it was not tuned on. Linear in
    sigma, its faithful ramp bands less and follows the converged edit closer than the
    default cube does, on the benchmark's small scene (measured, not assumed)."""
    from kdiff_differential.core import release
    from samplers.banding import fidelity_table

    assert release.FAITHFUL_POWERS["dpm_2"] == 1.0
    linear = fidelity_table(["dpm_2"], [5], ["faithful"], seeds=[0], height=64, width=160)["faithful", "dpm_2", 5]
    monkeypatch.setitem(release.FAITHFUL_POWERS, "dpm_2", release.FAITHFUL_POWER)
    cube = fidelity_table(["dpm_2"], [5], ["faithful"], seeds=[0], height=64, width=160)["faithful", "dpm_2", 5]
    assert linear["banding"] < cube["banding"] - 1 and linear["dam"] < cube["dam"] - 1


def test_faithful_release_follows_the_converged_edit_closer_than_binary_at_5_steps():
    """The benchmark's DAM on a small scene: the target of issue 21 for the samplers
    whose smooth release over-changes most (measured, not assumed)."""
    from samplers.banding import fidelity_table

    table = fidelity_table(["heun", "dpmpp_2m"], [5], ["faithful", "smooth", "binary"], seeds=[0], height=64, width=160)
    for sampler in ("heun", "dpmpp_2m"):
        assert table["faithful", sampler, 5]["dam"] < table["binary", sampler, 5]["dam"] < table["smooth", sampler, 5]["dam"]
