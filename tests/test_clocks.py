"""Threshold clocks: tau's shape and values, and the release sigmas that replace it at call time."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdiff_differential.core.clocks import DiscreteTimestep, find_attribute, make_clock, make_span, model_timestep
from kdiff_differential.core.release import release_map, release_sigmas

from k_diffusion.sampling import get_sigmas_karras

from conftest import ideal_denoiser

DENOISER = ideal_denoiser()
QUANTIZED = ideal_denoiser(quantize=True)
# Starts below the model's sigma_max (so calls above the start exist in timestep space)
# and ends at the model's sigma_min, then 0, as karras schedules do.
SIGMAS = get_sigmas_karras(10, DENOISER.sigma_min.item(), 10.0)


def clock(name, sigmas=SIGMAS, model=DENOISER):
    span = make_span(sigmas, model_sigma_min=model.sigma_min)
    return span, make_clock(name, span, model_timestep(model) if name == "timestep" else None)


CLOCKS = {
    "timestep": clock("timestep"),
    "timestep-quantized": clock("timestep", model=QUANTIZED),
    "sigma": clock("sigma"),
    "step": clock("step"),
}

sigma_values = st.floats(min_value=1e-3, max_value=100.0, allow_nan=False)
strength_values = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def tau_of(tau, sigma: float) -> float:
    """tau at one sigma, evaluated as a model call evaluates it."""
    return tau(torch.tensor([sigma], dtype=torch.float32)).item()


@pytest.mark.parametrize("name", CLOCKS)
@settings(max_examples=60, deadline=None)
@given(a=sigma_values, b=sigma_values)
def test_tau_never_falls_as_sigma_grows(name, a, b):
    _, tau = CLOCKS[name]
    low, high = sorted((a, b))
    assert tau_of(tau, low) <= tau_of(tau, high)


@pytest.mark.parametrize("name", ["timestep", "timestep-quantized", "sigma"])
def test_tau_is_one_at_the_start_and_zero_at_the_end(name):
    span, tau = CLOCKS[name]
    assert tau_of(tau, span.sigma_from) == 1.0
    assert tau_of(tau, span.sigma_to) == 0.0
    assert tau_of(tau, span.sigma_from * 1.5) > 1.0


def test_step_clock_is_the_papers_ramp_interpolated_in_log_sigma():
    _, tau = CLOCKS["step"]
    n = len(SIGMAS) - 1
    for i in range(n):
        assert tau_of(tau, SIGMAS[i].item()) == pytest.approx(1 - i / n, abs=1e-6)
    midpoint = math.sqrt(SIGMAS[3].item() * SIGMAS[4].item())  # where Heun/DPM2-style calls land
    assert tau_of(tau, midpoint) == pytest.approx(1 - 3.5 / n, abs=1e-5)
    assert tau_of(tau, SIGMAS[0].item() * 2) > 1.0


def test_the_timestep_clock_uses_the_models_timesteps():
    # Quantised timesteps make tau a staircase; the interpolated clock is smooth.
    _, smooth = CLOCKS["timestep"]
    _, stairs = CLOCKS["timestep-quantized"]
    between = [SIGMAS[5].item() * (1 + k * 1e-4) for k in range(4)]
    assert len({tau_of(stairs, s) for s in between}) == 1
    assert len({tau_of(smooth, s) for s in between}) == 4


@pytest.mark.parametrize("name", CLOCKS)
@settings(max_examples=150, deadline=None)
@given(sigma=sigma_values, s=strength_values)
def test_release_sigma_agrees_with_the_tau_rule(name, sigma, s):
    """free <=> s >= tau(sigma), the ComfyUI rule, which compat='comfyui' keeps everywhere."""
    span, tau = CLOCKS[name]
    sigma = torch.tensor(sigma, dtype=torch.float32).item()
    strength = torch.tensor([[[[s]]]], dtype=torch.float32)
    release = release_map(tau, span, strength, frees_strength_zero=True).item()
    assert (sigma <= release) == (strength.item() >= tau_of(tau, sigma))


@pytest.mark.parametrize("name", CLOCKS)
@settings(max_examples=60, deadline=None)
@given(strengths=st.lists(strength_values, min_size=2, max_size=12))
def test_release_sigma_grows_with_strength(name, strengths):
    """At any sigma, the mask is monotone in s: a stronger pixel is released no later."""
    span, tau = CLOCKS[name]
    values = torch.tensor(sorted(strengths))
    release = release_map(tau, span, values)
    assert torch.all(release[1:] >= release[:-1])


@pytest.mark.parametrize("name", CLOCKS)
def test_each_pixel_is_released_once_and_stays_released(name):
    span, tau = CLOCKS[name]
    strength = torch.linspace(0, 1, 101)
    release = release_map(tau, span, strength)
    calls = torch.logspace(math.log10(span.sigma_from * 2), math.log10(0.01), 200)
    free = calls[:, None] <= release[None, :]  # (call, pixel)
    assert torch.all(free[1:] >= free[:-1])  # once free, free at every later (lower) sigma


@pytest.mark.parametrize("name", CLOCKS)
def test_default_rule_at_the_boundaries(name):
    span, tau = CLOCKS[name]
    release = release_map(tau, span, torch.tensor([0.0, 1e-3, 1.0]))
    # Strength 1 is free from the first call; nothing is free above the schedule's start.
    assert release[2].item() >= span.sigma_from
    assert release.max().item() < span.sigma_from * 1.01
    # Strength 0 is never free.
    assert release[0].item() == -math.inf


def test_comfyui_rule_frees_strength_zero_at_a_last_call_at_the_models_sigma_min():
    span, tau = CLOCKS["timestep"]
    assert span.sigma_to == pytest.approx(DENOISER.sigma_min.item())
    release = release_map(tau, span, torch.tensor([0.0]), frees_strength_zero=True).item()
    assert release >= SIGMAS[-2].item()  # the last call is at the model's sigma_min


def test_bisection_is_exact_on_the_float_grid():
    # tau = sigma / 10: the largest float32 with sigma / 10 <= s, checked one ulp either side.
    tau = lambda sigma: sigma / 10
    s = torch.tensor([0.123, 0.5, 0.999], dtype=torch.float32)
    release = release_sigmas(tau, s)
    assert torch.all(tau(release) <= s)
    above = torch.nextafter(release, torch.tensor(math.inf))
    assert torch.all(tau(above) > s)


def test_the_models_clock_is_found_through_guidance_wrappers():
    class Wrapper(torch.nn.Module):
        def __init__(self, inner_model):
            super().__init__()
            self.inner_model = inner_model

    assert find_attribute(Wrapper(Wrapper(DENOISER)), "sigma_to_t") == DENOISER.sigma_to_t
    assert find_attribute(Wrapper(lambda x: x), "sigma_to_t") is None


def test_span_from_schedule_and_from_range():
    span = make_span(torch.tensor([10.0, 5.0, 1.0, 0.0]))
    assert (span.sigma_from, span.sigma_to) == (10.0, 1.0)  # last non-zero level
    span = make_span(torch.tensor([10.0, 5.0, 0.5, 0.0]), model_sigma_min=1.0)
    assert span.sigma_to == 1.0  # the model's sigma_min, above the last level
    span = make_span(sigma_min=0.1, sigma_max=10.0)
    assert (span.sigma_from, span.sigma_to, span.sigmas) == (10.0, 0.1, None)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(sigmas=torch.ones(2, 2)), ValueError, "1-D"),
        (dict(sigmas=torch.tensor([1.0])), ValueError, "at least two"),
        (dict(sigmas=torch.tensor([1.0, 2.0, 0.0])), ValueError, "descending"),
        (dict(sigmas=torch.tensor([1.0, 1.0, 0.0])), ValueError, "descending"),
        (dict(sigmas=torch.tensor([1.0, -1.0])), ValueError, "non-negative"),
        (dict(sigmas=torch.tensor([2.0, math.inf, 1.0])), ValueError, "finite"),
        (dict(sigmas=torch.tensor([math.nan, 1.0])), ValueError, "finite"),
        (dict(sigmas=[3.0, 1.0]), TypeError, "torch.Tensor"),
        (dict(sigmas=torch.tensor([3, 1])), TypeError, "float"),
        (dict(), ValueError, "sigma_min"),
        (dict(sigma_min=0.1), ValueError, "sigma_max"),
        (dict(sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min < sigma_max"),
        (dict(sigma_min=0.0, sigma_max=1.0), ValueError, "0 < sigma_min"),
        (dict(sigmas=torch.tensor([2.0, 1.0]), sigma_min=0.1, sigma_max=2.0), ValueError, "not both"),
    ],
)
def test_bad_schedules_are_named(kwargs, error, words):
    with pytest.raises(error) as raised:
        make_span(**kwargs)
    assert words in str(raised.value)


def test_step_clock_needs_a_schedule_and_clocks_need_a_range():
    with pytest.raises(ValueError, match="clock='step' needs the schedule"):
        make_clock("step", make_span(sigma_min=0.1, sigma_max=10.0))
    with pytest.raises(ValueError, match="spans no noise range"):
        make_clock("sigma", make_span(torch.tensor([5.0, 0.0])))
    with pytest.raises(ValueError, match="'timestep', 'step', 'sigma'"):
        make_clock("karras", make_span(torch.tensor([5.0, 1.0])))
    # One step from sigma to 0 still has a step ramp: tau = 1 at its only call.
    span = make_span(torch.tensor([5.0, 0.0]))
    assert tau_of(make_clock("step", span), 5.0) == 1.0


def test_nearest_timestep_is_the_quantized_sigma_to_t_of_an_interpolating_denoiser():
    sigmas = torch.exp(torch.linspace(-4, 3, 2001))
    timestep = model_timestep(DENOISER, nearest=True)
    assert torch.equal(timestep(sigmas), QUANTIZED.sigma_to_t(sigmas))
    assert model_timestep(lambda x, sigma: x) is None  # no sigma_to_t: no timestep


def test_a_comfyui_range_ends_at_the_models_sigma_min():
    floor = DENOISER.sigma_min.item()
    assert make_span(sigma_min=0.5, sigma_max=10.0, model_sigma_min=floor, range_ends_at_model_floor=True).sigma_to == floor
    assert make_span(sigma_min=0.5, sigma_max=10.0, model_sigma_min=floor).sigma_to == 0.5
    # A schedule reads the same either way: its last level is 0, below the model's floor.
    comfy, default = make_span(SIGMAS, model_sigma_min=floor, range_ends_at_model_floor=True), make_span(SIGMAS, model_sigma_min=floor)
    assert (comfy.sigma_from, comfy.sigma_to) == (default.sigma_from, default.sigma_to)


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_discrete_timestep_is_k_diffusions_sigma_to_t_bit_for_bit(quantize, dtype):
    """The binary search finds the neighbours k-diffusion's (1000, n) table does."""
    model = QUANTIZED if quantize else DENOISER
    g = torch.Generator().manual_seed(0)
    sigmas = torch.cat([
        torch.exp(torch.empty(20000, dtype=dtype).uniform_(-8, 6, generator=g)),  # inside and beyond the levels
        model.sigmas.to(dtype),  # the levels themselves, and an ulp either side
        torch.nextafter(model.sigmas.to(dtype), torch.tensor(0.0, dtype=dtype)),
        torch.nextafter(model.sigmas.to(dtype), torch.tensor(math.inf, dtype=dtype)),
        torch.tensor([0.0, 1e-30, 1e30], dtype=dtype),
    ])
    fast = DiscreteTimestep(model.log_sigmas, quantize)(sigmas)
    assert fast.dtype == model.sigma_to_t(sigmas).dtype
    assert torch.equal(fast, model.sigma_to_t(sigmas))


def bisection_over_all_floats(tau, strengths):
    """The boundary search release_sigmas replaced: 31 rounds over every float32's bits."""
    infinity = torch.tensor(math.inf).view(torch.int32).item()
    low = torch.zeros(strengths.shape, dtype=torch.int32)
    high = torch.full(strengths.shape, infinity, dtype=torch.int32)
    for _ in range(infinity.bit_length()):
        mid = low + (high - low) // 2
        ok = tau(mid.view(torch.float32)) <= strengths
        low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
    return low.view(torch.float32)


def flow_clock():
    from kdiff_differential.models.flow import FlowDenoiser

    flow = FlowDenoiser(lambda x, t: x, shift=3.0)
    span = make_span(flow.get_sigmas(8).float(), model_sigma_min=flow.sigma_min)
    return span, make_clock("timestep", span, model_timestep(flow))


@pytest.mark.parametrize("name", ["timestep", "timestep-quantized", "sigma", "step", "flow"])
def test_bracketed_boundaries_equal_the_bisection_over_all_floats(name):
    """Exact: the same float for every strength, many distinct ones, the ends included."""
    tau = flow_clock()[1] if name == "flow" else CLOCKS[name][1]
    g = torch.Generator().manual_seed(1)
    strengths = torch.cat([torch.rand(5000, generator=g), torch.linspace(0, 1, 257), torch.tensor([0.0, 1.0, 1e-7, 1 - 1e-7])])
    assert torch.equal(release_sigmas(tau, strengths), bisection_over_all_floats(tau, strengths))


# tau's values against its definition, tau(sigma) = (t(sigma) - t_to) / (t_from - t_to),
# with t(sigma) written here in float64 from the model's training levels (numpy's
# interpolation, not the code under test), and the release levels against its inverse.


def reference_t(name: str, sigma: np.ndarray) -> np.ndarray:
    """The model's timestep at ``sigma`` (float64): k-diffusion's interpolation in log
    sigma over the training levels, the nearest level, or the flow time sigma / (1 + sigma)."""
    if name == "flow":
        return 1 / (1 + 1 / sigma)  # 1 at sigma = inf, a flow schedule's start
    log_levels = DENOISER.log_sigmas.double().numpy()  # ascending
    if name == "timestep-quantized":
        return np.abs(np.log(sigma)[None, :] - log_levels[:, None]).argmin(axis=0).astype(np.float64)
    return np.interp(np.log(sigma), log_levels, np.arange(len(log_levels), dtype=np.float64))


def reference_sigma(name: str, t: np.ndarray) -> np.ndarray:
    """The largest sigma whose timestep is at most ``t`` (the inverse of reference_t)."""
    if name == "flow":
        return t / (1 - t)
    log_levels = DENOISER.log_sigmas.double().numpy()
    if name == "timestep-quantized":
        # The nearest level is at most k up to the log midpoint between k and k + 1.
        k = np.floor(t).astype(int)
        return np.exp((log_levels[k] + log_levels[np.minimum(k + 1, len(log_levels) - 1)]) / 2)
    return np.exp(np.interp(t, np.arange(len(log_levels), dtype=np.float64), log_levels))


TIMESTEP_CLOCKS = ("timestep", "timestep-quantized", "flow")


def timestep_clock(name: str):
    return flow_clock() if name == "flow" else CLOCKS[name]


@pytest.mark.parametrize("name", TIMESTEP_CLOCKS)
def test_tau_is_the_normalised_timestep_at_every_sigma(name):
    span, tau = timestep_clock(name)
    t_from, t_to = reference_t(name, np.array([span.sigma_from, span.sigma_to]))
    g = torch.Generator().manual_seed(2)
    sigmas = torch.cat([torch.exp(torch.empty(3000).uniform_(-5, 4, generator=g)), SIGMAS[:-1]])
    sigma = sigmas.double().numpy()
    expected = (reference_t(name, sigma) - t_to) / (t_from - t_to)
    if name == "timestep-quantized":
        # Drop sigmas within float32 rounding of a tie between two levels.
        log_levels = DENOISER.log_sigmas.double().numpy()
        midpoints = (log_levels[1:] + log_levels[:-1]) / 2
        keep = np.abs(np.log(sigma)[:, None] - midpoints[None, :]).min(axis=1) > 1e-5
        sigmas, expected = sigmas[torch.from_numpy(keep)], expected[keep]
    assert len(expected) > 2900
    np.testing.assert_allclose(tau(sigmas).double().numpy(), expected, rtol=0, atol=2e-5)


def test_the_log_sigma_clock_is_linear_in_log_sigma():
    span, tau = CLOCKS["sigma"]
    sigmas = torch.exp(torch.linspace(-5, 4, 2000))
    expected = np.log(sigmas.double().numpy() / span.sigma_to) / math.log(span.sigma_from / span.sigma_to)
    np.testing.assert_allclose(tau(sigmas).double().numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("name", TIMESTEP_CLOCKS)
def test_release_levels_invert_the_normalised_timestep(name):
    """Strength s is released at the largest sigma with t(sigma) <= t_to + s (t_from - t_to)."""
    span, tau = timestep_clock(name)
    t_from, t_to = reference_t(name, np.array([span.sigma_from, span.sigma_to]))
    strengths = torch.linspace(0.005, 0.995, 199)
    expected = reference_sigma(name, t_to + strengths.double().numpy() * (t_from - t_to))
    release = release_map(tau, span, strengths).double().numpy()
    np.testing.assert_allclose(release, expected, rtol=1e-4)
