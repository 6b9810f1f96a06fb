"""The wrapper stays out of the way: it compiles whole, never reads a tensor back to the
host at call time, captures into a CUDA graph, costs each release rule a bounded
multiple of the binary rule per call, and its benchmark script runs.

The per-call bounds are timed: interleaved rounds in the thread's CPU time
(``samplers/overhead.py``, which measures the cost per call for the report).
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdiff_differential import DifferentialDenoiser
from samplers import overhead
from samplers.threads import one_thread
from samplers.comfyui_reference import ComfyUIReference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is available here")


class PlainInner(nn.Module):
    """A small conv denoiser, (x, sigma) -> x0, cheap to compile."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma.view(-1, 1, 1, 1) * self.conv(x / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt())


def make_wrapper(strength: float = 1.0, device: str = "cpu", size: int = 8, release: str = "smooth",
                 inner: nn.Module | None = None, sampler: str | None = None) -> DifferentialDenoiser:
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, size, size, generator=g)
    ramp = torch.linspace(0, 1, size).expand(size, size)
    sigmas = torch.linspace(10, 0.1, 11)
    dd = DifferentialDenoiser(inner or PlainInner(), latent, ramp, sigmas=sigmas, generator=g, strength=strength,
                              release=release, sampler=sampler)
    return dd.to(device)


# Every release rule, and the faithful one with the state it keeps for Heun.
RULES = [("smooth", None), ("binary", None), ("faithful", None), ("faithful", "heun")]


class CompVisInner(nn.Module):
    """PlainInner's convolution behind the CompVis interface: the wrapper then evaluates the
    discrete model's sigma_to_t at every smooth-release call."""

    def __init__(self) -> None:
        super().__init__()
        from kdiff_differential.models.ideal import sd_alphas_cumprod

        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.conv = PlainInner().conv

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize(
    "strength, release, compvis, sampler",
    [(1.0, "smooth", False, None), (0.5, "smooth", False, None), (1.0, "binary", False, None), (0.5, "binary", False, None),
     (1.0, "smooth", True, None), (1.0, "faithful", False, None), (0.5, "faithful", True, "heun")],
)
def test_compiled_fullgraph_sampling_matches_eager_without_recompiles(strength, release, compvis, sampler):
    import k_diffusion.sampling as sampling
    from k_diffusion.external import CompVisDenoiser

    torch._dynamo.reset()
    dd = make_wrapper(strength, release=release, inner=CompVisDenoiser(CompVisInner()) if compvis else None, sampler=sampler)
    # fullgraph=True turns any graph break into an error; error_on_recompile catches a
    # guard on sigma's value, which would recompile at every step.
    compiled = torch.compile(dd, fullgraph=True)
    x = dd.noisy_latent()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        got = sampling.sample_euler(compiled, x, dd.sigmas, disable=True)
    want = sampling.sample_euler(dd, x, dd.sigmas, disable=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compiled_around_a_compiled_inner_makes_no_graph_break():
    torch._dynamo.reset()
    dd = make_wrapper()
    dd.inner_model = torch.compile(dd.inner_model, backend="eager")
    explanation = torch._dynamo.explain(dd)(dd.noisy_latent(), torch.tensor([3.0]))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("release, sampler", RULES)
@pytest.mark.parametrize(
    "strength, k, sigma",
    [(1.0, 1, torch.tensor([3.0])), (0.5, 1, torch.tensor([3.0])), (1.0, 2, torch.tensor([3.0, 3.0])), (1.0, 1, 3.0)],
    ids=["strength-1", "soft", "guided-batch", "float-sigma"],
)
def test_a_call_reads_nothing_back_to_the_host(strength, k, sigma, release, sampler):
    dd = make_wrapper(strength, release=release, sampler=sampler)
    x = dd.noisy_latent().repeat(k, 1, 1, 1)
    with torch.no_grad(), overhead.count_host_reads() as counts:
        for _ in range(3):
            dd(x, sigma)
    assert counts == {}


T, MASK = torch.tensor([1.5, 2.5]), torch.tensor([True, False])
ONE = torch.tensor(2.5)
# Every way from a tensor to the host, and the name the counter gives it.
HOST_READS = {
    "item": lambda: ONE.item(),
    "__float__": lambda: float(ONE),
    "__int__": lambda: int(ONE),
    "__bool__": lambda: 1 if ONE > 1 else 0,
    "__index__": lambda: [0, 1, 2, 3][ONE.long()],
    "tolist": lambda: T.tolist(),
    "numpy": lambda: T.numpy(),
    "__array__": lambda: __import__("numpy").asarray(T),
    "__format__": lambda: f"{ONE:.2f}",
    "cpu": lambda: T.cpu(),
    "nonzero": lambda: torch.nonzero(T),
    "where": lambda: torch.where(MASK),
    "boolean indexing": lambda: T[MASK],
    "masked_select": lambda: T.masked_select(MASK),
    "unique": lambda: torch.unique(T),
    "equal": lambda: torch.equal(T, T),
    "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
}


@pytest.mark.parametrize("name", HOST_READS)
def test_the_host_read_counter_sees_every_way_to_the_host(name):
    with overhead.count_host_reads() as counts:
        HOST_READS[name]()
    assert counts.get(name, 0) >= 1, counts


def test_the_host_read_counter_sees_boolean_assignment_and_ignores_device_work():
    x = T.clone()
    with overhead.count_host_reads() as counts:
        x[MASK] = 0.0
    assert counts == {"boolean indexing": 1}
    with overhead.count_host_reads() as counts:
        y = torch.where(MASK, T, -T).lerp(T, 0.5)
        y = y.index_select(0, torch.searchsorted(T, y.contiguous()).clamp(max=1))
        y = y[0] + y[torch.tensor([1])] + T.sum() * T.max()
    assert counts == {}


def test_the_host_read_counter_sees_the_comfyui_baselines_branch():
    dd = make_wrapper()
    reference = ComfyUIReference(dd.inner_model, dd.latent, dd.change_map, dd.sigmas, dd.noise)
    with torch.no_grad(), overhead.count_host_reads() as counts:
        reference(dd.noisy_latent(), torch.tensor([3.0]))
    assert counts["__bool__"] >= 1


@needs_cuda
def test_a_call_makes_no_cuda_synchronisation():
    dd = make_wrapper(device="cuda", size=64)
    x, sigma = dd.noisy_latent(), torch.tensor([3.0], device="cuda")
    with torch.no_grad():
        dd(x, sigma)  # lazy one-time initialisation is not a per-call cost
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                dd(x, sigma)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.parametrize("release, sampler", RULES)
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_a_call_captures_into_a_cuda_graph(strength, release, sampler):
    dd = make_wrapper(strength, device="cuda", size=64, release=release, sampler=sampler)
    x, sigma = dd.noisy_latent().clone(), torch.tensor([10.0], device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                dd(x, sigma)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = dd(x, sigma)
        for level in (9.0, 3.0, 0.2):
            x.copy_(dd.noisy_latent(level) + 0.1)
            sigma.fill_(level)
            eager = copy.deepcopy(dd)  # with the state the call starts from (Heun's previous sigma)
            graph.replay()
            torch.testing.assert_close(out, eager(x, sigma))


def test_benchmark_script_writes_its_report(tmp_path, capsys):
    path = tmp_path / "report.json"
    argv = ["--device", "cpu", "--rounds", "2", "--calls", "3", "--steps", "2", "--size", "8", "--json", str(path)]
    assert overhead.main(argv) == 0
    assert "DifferentialDenoiser" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert {"date", "device", "device_name", "torch", "dtype", "latent_shape", "steps", "rounds",
            "inner_us_per_call", "sync_method", "primitives_us", "wrappers", "bare_run_s"} <= report.keys()
    assert report["wrappers"].keys() == {"faithful", "differential", "binary", "comfyui"}
    for values in report["wrappers"].values():
        assert {"class", "per_call_us", "host_syncs_per_call", "ab", "held_bytes", "held_bytes_after_run",
                "held_latents"} <= values.keys()
        for sampler in overhead.SAMPLERS:
            ratios = values["ab"][sampler]
            assert len(ratios["ratios"]) == 2 and ratios["min"] <= ratios["median"] <= ratios["max"]
        assert values["held_bytes_after_run"] == values["held_bytes"]
    for name in ("faithful", "differential", "binary"):
        assert report["wrappers"][name]["host_syncs_per_call"] == 0
    assert report["wrappers"]["comfyui"]["host_syncs_per_call"] >= 1
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed, not left


@pytest.fixture(scope="module")
def per_call_cost():
    """Each release rule's cost per call as the benchmark measures it (a call over a
    near-free inner, minus the bare call; SD 1.5's 64x64 latent; one thread): short
    interleaved rounds timed in the thread's CPU time, so that a busy machine slows
    every rule alike and time spent waiting for a core counts for none; the median of 201."""
    setup = overhead.build(torch.device("cpu"), 64, 20)

    def rule(release: str, sampler: str | None = None) -> DifferentialDenoiser:
        return DifferentialDenoiser(setup.free, setup.latent, setup.change_map, sigmas=setup.sigmas,
                                    noise=setup.noise, release=release, sampler=sampler)

    wrappers = {"binary": rule("binary"), **{"-".join(filter(None, r)): rule(*r) for r in RULES if r[0] != "binary"}}
    with torch.no_grad(), one_thread():
        return overhead.per_call_us(setup, wrappers, calls=20, rounds=201, clock=time.thread_time)


# Per call, at most this many times the binary rule: measured on a shared 2-core CPU
# (faithful 1.13-1.15x, smooth 1.88-1.93x, faithful told Heun 1.34-1.37x), with a fifth for
# a noisy machine (a loaded one measured faithful at 1.24x). Issue 21's 1.2x target for
# faithful is the benchmark's (samplers/PERFORMANCE.md), not this guard against regressions.
PER_CALL_BOUNDS = {"faithful": 1.38, "faithful-heun": 1.65, "smooth": 2.3}


@pytest.mark.parametrize("rule", PER_CALL_BOUNDS)
def test_each_release_rule_costs_a_bounded_multiple_of_binary_per_call_on_cpu(rule, per_call_cost):
    assert per_call_cost[rule] <= PER_CALL_BOUNDS[rule] * per_call_cost["binary"], per_call_cost


@pytest.mark.parametrize(
    "argv",
    [["--device", "tpu"], ["--rounds", "0"], ["--size", "x"], ["--json", "/no/such/folder/out.json"], ["--bogus"]],
    ids=["device", "rounds", "size", "json-folder", "unknown"],
)
def test_benchmark_script_rejects_bad_input_in_one_line(argv, capsys):
    assert overhead.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("overhead: error:")


def test_benchmark_script_fails_without_a_traceback_from_the_shell():
    done = subprocess.run(
        [sys.executable, "-m", "samplers.overhead", "--steps", "-3"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(
    "module, argv, says",
    [
        ("flux_gpu", [], "the Flux.1 benchmark (bf16, 1024²) needs a CUDA device"),
        ("flux_gpu", ["--rounds", "0"], "--rounds: expected a positive integer"),
        ("sdxl_speed", [], "--device cuda needs a CUDA device"),
        ("sdxl_speed", ["--device", "cpu", "--size", "20"], "--size must be a multiple of 8"),
        ("sdxl_speed", ["--device", "cpu", "--json", "/no/such/folder/out.json"], "--json: folder /no/such/folder does not exist"),
        ("overhead", ["--device", "cuda"], "--device cuda needs a CUDA device"),
        ("wan_memory", ["--device", "cuda"], "--device cuda needs a CUDA device"),
        ("wan_memory", ["--size", "100x208"], "--size: each side must be a multiple of 8"),
        ("wan_memory", ["--size", "480"], "--size: expected HxW in pixels"),
        ("wan_memory", ["--frames", "5", "6"], "--frames: Wan's VAE takes 1 + 4k frames, got 6"),
    ],
)
def test_the_gpu_benchmarks_refuse_in_one_line_where_there_is_no_gpu(module, argv, says, capsys, monkeypatch):
    import importlib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert importlib.import_module(f"samplers.{module}").main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_the_sdxl_benchmark_writes_its_json_atomically_on_cpu(tmp_path, capsys):
    from samplers import sdxl_speed

    path = tmp_path / "sdxl.json"
    argv = ["--device", "cpu", "--tiny", "--size", "32", "--steps", "2", "--rounds", "1", "--json", str(path)]
    assert sdxl_speed.main(argv) == 0
    report = json.loads(path.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["unet"] == "tiny" and report["ratio"] > 0
    assert list(tmp_path.iterdir()) == [path]
