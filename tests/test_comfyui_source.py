"""compat="comfyui" against ComfyUI's own code, loaded at run time.

CI cannot download ComfyUI and its code is never committed here, so this module reads
a ComfyUI source tree from the folder named by ``KDIFF_COMFYUI_SRC`` and skips where
that is unset; ``tests/test_comfyui_golden.py`` checks the same cases in every CI run
against ComfyUI's outputs frozen from that source. Measured against Comfy-Org/ComfyUI
a125cd84 (2025-10-11); get it with

    git clone https://github.com/Comfy-Org/ComfyUI /work/comfyui-src
    git -C /work/comfyui-src checkout a125cd84
    KDIFF_COMFYUI_SRC=/work/comfyui-src python -m pytest -q -s tests/test_comfyui_source.py

Our side runs the wrapper with upstream k-diffusion's samplers, as users do, and once
more with ComfyUI's fork of them, which isolates the wrapper. The fork ends ``lms``
with ``x = denoised`` and queries ``dpmpp_sde``'s Brownian tree a few ulps away from
upstream, so for those two ComfyUI's KSAMPLER drives upstream's samplers and they are
compared under upstream only. ``-s`` prints each case's largest difference. The
harness is ``tests/comfyui_harness.py``.
"""

import inspect
import os

import pytest
import torch

from comfyui_harness import CASES, FORK_ONLY, SCHEDULE_CASES, comfyui_named_schedule, comfyui_run, comfyui_schedule, load_comfyui, our_run, our_schedule

SOURCE = os.environ.get("KDIFF_COMFYUI_SRC")
pytestmark = pytest.mark.skipif(
    not SOURCE,
    reason="KDIFF_COMFYUI_SRC is not set: point it at a ComfyUI source tree (Comfy-Org/ComfyUI a125cd84) "
    "to compare compat='comfyui' with ComfyUI's own code; CI cannot download it (tests/test_comfyui_golden.py "
    "runs the same cases against ComfyUI's frozen outputs)",
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def comfy():
    try:
        return load_comfyui(SOURCE)
    except FileNotFoundError as error:
        pytest.fail(f"KDIFF_COMFYUI_SRC: {error}")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_case_matches_comfyui(comfy, case):
    sigmas = comfyui_schedule(comfy, case)
    theirs = comfyui_run(comfy, case, sigmas)
    diffs = {"upstream": (our_run(case, sigmas) - theirs).abs().max().item()}
    if case.name not in FORK_ONLY:
        diffs["fork"] = (our_run(case, sigmas, fork=comfy) - theirs).abs().max().item()
    print(f"\n{case.id}: " + ", ".join(f"{key} {value:.1e}" for key, value in diffs.items()), end="")
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("name, steps", SCHEDULE_CASES)
def test_comfyuis_schedule_names_give_comfyuis_sigmas(comfy, name, steps):
    torch.testing.assert_close(our_schedule(name, steps), comfyui_named_schedule(comfy, name, steps), atol=0, rtol=1e-6)


def test_the_source_is_the_node_with_strength(comfy):
    """What this module measures against: the node with its strength input."""
    assert "strength and strength < 1" in inspect.getsource(comfy.node.forward)
