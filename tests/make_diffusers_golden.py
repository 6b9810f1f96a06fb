"""Freeze the diffusers community Differential Diffusion pipelines' own outputs for
``tests/test_diffusers_compat.py``.

Runs the SDXL, SD3, Flux.1 and Z-Image pipelines (``diffusers_harness.PIPELINES``) on
every case of ``diffusers_harness.CASES`` and writes the numbers (not the code) to
``tests/data/diffusers_golden.pt``: per pipeline its image latent, noise and network
fingerprint, per map the keep-map, per case the schedule and final latent. From the
repository root, with the pipelines' files from huggingface/diffusers at the commit
named in ``diffusers_harness.DIFFUSERS_COMMIT``::

    git clone https://github.com/huggingface/diffusers /work/diffusers-src
    git -C /work/diffusers-src checkout 58eb52c080
    KDIFF_DIFFUSERS_COMMUNITY=/work/diffusers-src/examples/community python tests/make_diffusers_golden.py
"""

import os
import sys
import tempfile
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).parent))

from diffusers_harness import DIFFUSERS_COMMIT, MAPS, PIPELINES, STEPS, case_id, fingerprint, load_community, pipeline_run  # noqa: E402

from kdiff_differential.files.atomic import write_atomically  # noqa: E402

OUT = Path(__file__).parent / "data" / "diffusers_golden.pt"


def main() -> int:
    source = os.environ.get("KDIFF_DIFFUSERS_COMMUNITY")
    if not source or not Path(source, PIPELINES["sdxl"][0]).is_file():
        print("make_diffusers_golden: set KDIFF_DIFFUSERS_COMMUNITY to diffusers' examples/community folder", file=sys.stderr)
        return 2
    golden = {"commit": DIFFUSERS_COMMIT, "torch": str(torch.__version__), "diffusers": diffusers.__version__,
              "maps": MAPS, "pipelines": {}, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, _, build, _, _) in PIPELINES.items():
            folder = build(Path(tmp, name))
            pipe = load_community(source, name, folder)
            shared = None
            for map_name, keep in MAPS.items():
                for steps in STEPS:
                    run = pipeline_run(pipe, name, keep, steps)
                    if shared is None:
                        shared = {"latent": run["latent"], "noise": run["noise"], "fingerprint": fingerprint(folder)}
                    # One seed: every run of a pipeline encodes and noises the same.
                    assert torch.equal(run["latent"], shared["latent"]) and torch.equal(run["noise"], shared["noise"])
                    golden["cases"][case_id(name, map_name, steps)] = {"sigmas": run["sigmas"], "result": run["result"]}
            golden["pipelines"][name] = shared
    write_atomically(OUT, lambda handle: torch.save(golden, handle), binary=True)
    print(f"wrote {OUT}: {len(golden['cases'])} cases, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
