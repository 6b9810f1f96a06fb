"""compat="comfyui" against ComfyUI's own outputs, frozen: runs in every CI run.

``tests/data/comfyui_golden.pt`` holds what ComfyUI's own code (its DifferentialDiffusion
node, KSAMPLER.sample, schedulers and model_sampling, at the commit the file names)
produced for each case of ``comfyui_harness.CASES``: the schedule, the sampler's start
and the result. ``tests/make_comfyui_golden.py`` regenerates it from a checkout;
``tests/test_comfyui_source.py`` runs the same cases live against one.

Our side runs the wrapper under upstream k-diffusion, as users do. ComfyUI's fork of
``lms`` and ``dpmpp_sde`` differs from upstream (it ends ``lms`` with ``x = denoised``
and queries ``dpmpp_sde``'s Brownian tree a few ulps away), so for those two the frozen
results come from ComfyUI's node and KSAMPLER driving upstream's samplers: every case
is held to 1e-5. dpm_adaptive's cases run in float64 on both sides: in float32 its step
controller feeds on rounding, and another CPU's rounding takes another path (0.09 apart).
Maps with exact 0 and 1 catch the last-call freeing of strength-0 pixels; quantised cases
run ComfyUI's own eps and v denoised calculation.
"""

from pathlib import Path

import pytest
import torch

from comfyui_harness import CASES, COMFYUI_COMMIT, PREDICTION_PAIRS, SCHEDULE_CASES, START_CASES, our_run, our_schedule, our_start

GOLDEN = torch.load(Path(__file__).parent / "data" / "comfyui_golden.pt", weights_only=True)
TOLERANCE = 1e-5


def test_the_golden_file_is_comfyuis_and_covers_every_case():
    assert GOLDEN["commit"].startswith(COMFYUI_COMMIT)
    assert sorted(GOLDEN["cases"]) == sorted(case.id for case in CASES)
    assert sorted(GOLDEN["schedules"]) == sorted(f"{name}-{steps}" for name, steps in SCHEDULE_CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"comfyui_golden-{case.id}" for case in CASES])
def test_each_case_matches_comfyuis_frozen_result(case):
    frozen = GOLDEN["cases"][case.id]
    difference = (our_run(case, frozen["sigmas"]) - frozen["result"]).abs().max().item()
    assert difference <= TOLERANCE, difference


def test_the_cases_include_maps_with_exact_zero_and_one():
    from comfyui_harness import case_inputs

    exact = [case for case in CASES if case.map_kind != "rand"]
    assert {case.map_kind for case in exact} == {"gradient", "halves", "levels"}
    for case in exact:
        change_map = case_inputs(case)[2]
        assert change_map.min() == 0 and change_map.max() == 1, case.id


@pytest.mark.parametrize("eps, v", PREDICTION_PAIRS, ids=[eps.name for eps, _ in PREDICTION_PAIRS])
def test_eps_and_v_cases_give_different_results(eps, v):
    """The flawed network's error enters ComfyUI's eps and v calculations differently."""
    apart = (GOLDEN["cases"][eps.id]["result"] - GOLDEN["cases"][v.id]["result"]).abs().max().item()
    assert apart > 0.05, apart


@pytest.mark.parametrize("case", START_CASES, ids=lambda case: f"comfyui_golden-start-{case.id}")
def test_the_start_is_comfyuis(case):
    """Full denoise starts at latent + noise * sqrt(1 + sigma^2); a partial one at noise * sigma."""
    frozen = GOLDEN["cases"][case.id]
    torch.testing.assert_close(our_start(case, frozen["sigmas"]), frozen["start"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, steps", SCHEDULE_CASES, ids=[f"comfyui_golden-schedule-{n}-{s}" for n, s in SCHEDULE_CASES])
def test_comfyuis_schedule_names_give_comfyuis_sigmas(name, steps):
    torch.testing.assert_close(our_schedule(name, steps), GOLDEN["schedules"][f"{name}-{steps}"], atol=0, rtol=1e-6)
