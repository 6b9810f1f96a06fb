"""Freeze ComfyUI's own outputs for ``tests/test_comfyui_golden.py``.

Runs ComfyUI's Differential Diffusion node and sampler (see ``comfyui_harness.py``)
on every case of ``comfyui_harness.CASES`` and its scheduler on every
``SCHEDULE_CASES``, and writes the numbers (not the code) to
``tests/data/comfyui_golden.pt`` (the start only for ``START_CASES``, to keep the file
small). From the repository root, with a ComfyUI checkout at the commit named in
``comfyui_harness.COMFYUI_COMMIT``::

    git clone https://github.com/Comfy-Org/ComfyUI /work/comfyui-src
    git -C /work/comfyui-src checkout a125cd84
    KDIFF_COMFYUI_SRC=/work/comfyui-src python tests/make_comfyui_golden.py
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from comfyui_harness import CASES, COMFYUI_COMMIT, SCHEDULE_CASES, START_CASES, comfyui_named_schedule, comfyui_run, comfyui_schedule, comfyui_start, load_comfyui  # noqa: E402

from kdiff_differential.files.atomic import write_atomically  # noqa: E402

OUT = Path(__file__).parent / "data" / "comfyui_golden.pt"


def main() -> int:
    source = os.environ.get("KDIFF_COMFYUI_SRC")
    if not source:
        print("make_comfyui_golden: set KDIFF_COMFYUI_SRC to a ComfyUI checkout", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not commit.startswith(COMFYUI_COMMIT):
        print(f"make_comfyui_golden: {source} is at {commit or 'no git commit'}, not {COMFYUI_COMMIT}", file=sys.stderr)
        return 2
    comfy = load_comfyui(source)
    golden = {"commit": commit, "torch": str(torch.__version__), "cases": {}, "schedules": {}}
    for case in CASES:
        sigmas = comfyui_schedule(comfy, case)
        golden["cases"][case.id] = {"sigmas": sigmas, "result": comfyui_run(comfy, case, sigmas)}
        if case in START_CASES:
            golden["cases"][case.id]["start"] = comfyui_start(comfy, case, sigmas)
    for name, steps in SCHEDULE_CASES:
        golden["schedules"][f"{name}-{steps}"] = comfyui_named_schedule(comfy, name, steps)
    write_atomically(OUT, lambda handle: torch.save(golden, handle), binary=True)
    print(f"wrote {OUT}: {len(golden['cases'])} cases, {len(golden['schedules'])} schedules, ComfyUI {commit[:8]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
