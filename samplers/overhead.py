"""Benchmark: what a Differential Diffusion wrapper costs at each model call.

Measures :class:`DifferentialDenoiser` and the ComfyUI-style baseline
(:class:`samplers.comfyui_reference.ComfyUIReference`) in one run, on the same inputs:

- **per-call us**: a wrapped call minus a bare call of a near-free inner model (a
  ``CompVisDenoiser`` whose network returns its input), batch 1, no guidance; on the
  CPU in the thread's CPU time (``time.thread_time``), so that waiting for a core on a
  shared machine does not count;
- **host syncs per call**: on CUDA, the synchronisations that
  ``torch.cuda.set_sync_debug_mode`` reports, wrapped minus bare; on CPU, which has no
  device to wait for, the host reads that would be syncs on a GPU (``item``, ``float``,
  ``bool``, ``tolist``, ``nonzero``, boolean indexing, ...: :func:`count_host_reads`),
  counted the same way;
- **A/B ratio**: a full sampling run (Euler and DPM++ 2M) with the wrapper over the same
  run without it, in interleaved rounds whose order rotates, so that drift on a shared
  machine hits every variant alike; median, min and max over the rounds;
- **held bytes**: tensors the wrapper keeps beyond the latent, the noise and the map,
  before and after a sampling run (a per-step stack of masks would show as growth).

On CPU the model is a small conv net (about 10 ms per guided call); on CUDA it is an
SD1.5-size UNet built from its diffusers config with random weights, fp16, with
classifier-free guidance. Run from the repository root::

    python -m samplers.overhead --device cpu --json overhead-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from kdiff_differential import DifferentialDenoiser
from kdiff_differential.errors import InputError, OneLineParser, command_status
from kdiff_differential.core.guidance import CFGDenoiser
from kdiff_differential.models.ideal import sd_alphas_cumprod
from samplers.arguments import check_json, positive, require_cuda, write_json
from samplers.comfyui_reference import ComfyUIReference
from samplers.threads import one_thread

SAMPLERS = ("euler", "dpmpp_2m")
WRAPPERS = {
    "faithful": "DifferentialDenoiser(release='faithful')",  # differential_edit's and the CLI's default
    "differential": "DifferentialDenoiser",  # the wrapper's own default, smooth release
    "binary": "DifferentialDenoiser(release='binary')",
    "comfyui": "ComfyUIReference",
}
# Per device: A/B rounds and timed calls per per-call round. The CPU defaults keep a
# run under two minutes on two cores; the CUDA ones under five on an H100.
DEFAULT_ROUNDS = {"cpu": 40, "cuda": 15}
DEFAULT_CALLS = {"cpu": 1000, "cuda": 1000}
PER_CALL_ROUNDS = 7

# The UNet of Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, unet/config.json).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_TEXT = (77, 768)
CFG_SCALE = 7.5
PROG = "overhead"


# --- models -------------------------------------------------------------------------


class ConvNet(nn.Module):
    """The CPU model behind the CompVis interface: a few convolutions, sized to cost
    about 10 ms per guided call (batch 2, 4x64x64) on one thread."""

    def __init__(self, width: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.conv_in = nn.Conv2d(4, width, 3, padding=1)
        # GroupNorm before each SiLU, as in a UNet: unnormalised activations drift to
        # about -90, where SiLU returns denormals, and those run ten times slower on CPU.
        self.body = nn.Sequential(
            *[layer for _ in range(depth) for layer in (nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))]
        )
        self.conv_out = nn.Conv2d(width, 4, 3, padding=1)

    def apply_model(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        time_bias = (t.to(x.dtype) / 1000).view(-1, 1, 1, 1)
        return self.conv_out(self.body(self.conv_in(x) + time_bias + cond.view(*cond.shape, 1, 1)))


class Identity(nn.Module):
    """The near-free model for per-call timing: the network's output is its input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())

    def apply_model(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return x


@dataclasses.dataclass
class Setup:
    """Everything one benchmark run shares between the variants."""

    device: torch.device
    dtype: torch.dtype
    latent: Tensor
    change_map: Tensor  # (1, 1, H, W), latent size, 1 = change
    noise: Tensor
    sigmas: Tensor
    guided: nn.Module  # CFG around the real model
    free: nn.Module  # the near-free denoiser, no guidance
    extra_args: dict

    def wrap(self, name: str, inner: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """Wrapper ``name`` around ``inner``, both built from the same latent, map and noise."""
        if name in ("faithful", "differential", "binary"):
            release = "smooth" if name == "differential" else name
            return DifferentialDenoiser(inner, self.latent, self.change_map, sigmas=self.sigmas, noise=self.noise,
                                        release=release)
        return ComfyUIReference(inner, self.latent, self.change_map, self.sigmas, self.noise)


def build(device: torch.device, size: int, steps: int) -> Setup:
    """The models, latent, map, noise and schedule for ``device`` (fp16 UNet on CUDA)."""
    from k_diffusion.external import CompVisDenoiser

    torch.manual_seed(0)
    if device.type == "cuda":
        dtype = torch.float16
        try:
            from diffusers import UNet2DConditionModel

            from kdiff_differential.models.networks import DiffusersUNet
        except ImportError as error:
            raise InputError(f"--device cuda needs diffusers for the SD1.5-size UNet ({error})") from None
        # Only the UNet goes to fp16: the schedule (alphas_cumprod) stays float32.
        with torch.device(device):
            network: nn.Module = DiffusersUNet(UNet2DConditionModel(**SD15_UNET).to(dtype), sd_alphas_cumprod())
        cond_shape: tuple = SD15_TEXT
    else:
        dtype = torch.float32
        network = ConvNet()
        cond_shape = (network.conv_in.out_channels,)
    # quantize=True: ComfyUI's discrete clock, the nearest training timestep.
    denoiser = CompVisDenoiser(network, quantize=True).to(device)
    free = CompVisDenoiser(Identity(), quantize=True).to(device)
    cond, uncond = (torch.randn(1, *cond_shape, device=device, dtype=dtype) for _ in range(2))
    latent = torch.randn(1, 4, size, size, device=device, dtype=dtype)
    # A left-to-right ramp: every strength from keep to change, so pixels release all run long.
    ramp = torch.linspace(0, 1, size, device=device, dtype=dtype)
    return Setup(
        device=device,
        dtype=dtype,
        latent=latent,
        change_map=ramp.expand(1, 1, size, size).contiguous(),
        noise=torch.randn_like(latent),
        sigmas=denoiser.get_sigmas(steps).to(dtype),
        guided=CFGDenoiser(denoiser).eval(),
        free=free.eval(),
        extra_args={"cond": cond, "uncond": uncond, "cfg_scale": CFG_SCALE},
    )


# --- measurements -------------------------------------------------------------------


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _seconds(fn: Callable[[], Any], sync: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> float:
    sync()
    start = clock()
    fn()
    sync()
    return clock() - start


def _rotations(names: Sequence[str], rounds: int) -> Iterator[list]:
    """Round r runs the variants starting at r mod n, so each goes first equally often."""
    for r in range(rounds):
        k = r % len(names)
        yield list(names[k:]) + list(names[:k])


def per_call_us(setup: Setup, wrappers: dict, calls: int, rounds: int = PER_CALL_ROUNDS,
                clock: Callable[[], float] = time.perf_counter) -> dict:
    """Median over rounds of (wrapped - bare) seconds per call, in us, per wrapper; and
    the bare call's own cost under ``"inner"``. ``clock``: wall time by default;
    ``time.thread_time`` (CPU only) leaves out the time the thread waits for a core."""
    x = setup.noise.clone()
    sigma = setup.sigmas[len(setup.sigmas) // 2].reshape(1)
    variants = {"inner": setup.free, **wrappers}
    sync = _synchronizer(setup.device)

    def loop(fn: Callable[..., Tensor]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn(x, sigma)

        return run

    for fn in variants.values():  # warm-up: allocator, caches, lazy inits
        loop(fn)()
    samples: dict = {name: [] for name in variants}
    for order in _rotations(list(variants), rounds):
        times = {name: _seconds(loop(variants[name]), sync, clock) / calls for name in order}
        for name in variants:
            samples[name].append((times[name] - (times["inner"] if name != "inner" else 0)) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


# Torch functions that hand a tensor's values to Python, or whose output's shape depends
# on its values: on a GPU each makes the host wait for the device.
_READS = frozenset({
    "item", "tolist", "numpy", "__array__", "__bool__", "__float__", "__int__", "__index__", "__complex__",
    "__format__", "__repr__", "is_nonzero", "equal", "allclose", "cpu",
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount",
})


def _indexes_by_mask(index: Any) -> bool:
    """Whether a ``__getitem__``/``__setitem__`` index holds a boolean (or uint8) tensor."""
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(part, Tensor) and part.dtype in (torch.bool, torch.uint8) for part in parts)


def _host_read(func: Callable[..., Any], args: tuple, kwargs: dict) -> Optional[str]:
    """The name under which a call of ``func`` reads back to the host, or ``None``."""
    name = getattr(func, "__name__", "")
    if name in _READS:
        return name
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _indexes_by_mask(args[1]):
        return "boolean indexing"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "where"  # the one-argument form is nonzero
    if name == "repeat_interleave" and kwargs.get("output_size") is None:
        # Tensor repeats (the one-argument form: the tensor itself) without output_size.
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0] if args else None)
        if isinstance(repeats, Tensor):
            return "repeat_interleave"
    if name == "to" and args and isinstance(args[0], Tensor) and args[0].device.type != "cpu":
        targets = [*args[1:], kwargs.get("device")]
        if any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets):
            return "to(cpu)"  # a copy from the device to the host (on the CPU alone there is none)
    if name == "copy_" and len(args) > 1 and isinstance(args[1], Tensor):
        if args[0].device.type == "cpu" and args[1].device.type != "cpu":
            return "copy_ to cpu"
    return None


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts, by name, the torch calls in the block that read a tensor back to the host."""

    def __init__(self, counts: dict) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _host_read(func, args, kwargs)
        if name is not None:
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **kwargs)


@contextmanager
def count_host_reads(device: Any = "cpu") -> Iterator[dict]:
    """Count the reads from a tensor back to the host in the block, by name: the values
    handed to Python (``item``, ``float``, ``int``, ``bool``, ``tolist``, ``numpy``, ...),
    copies to the host (``cpu``), and ops whose output's size depends on the values
    (``nonzero``, boolean indexing, ``masked_select``, ``unique``, ...). Each makes
    the host wait for the device on a GPU; on the CPU they are seen by a
    ``TorchFunctionMode``, whatever tensor they act on. On a CUDA ``device`` the
    synchronisations ``torch.cuda.set_sync_debug_mode`` reports are added under
    ``"cuda synchronisation"`` when the block ends, which also catches reads made
    below torch's Python functions. Yields the dict (empty: nothing read)."""
    counts: dict = {}
    cuda = torch.device(device).type == "cuda"
    with _HostReads(counts), (count_cuda_syncs() if cuda else nullcontext([])) as syncs:
        yield counts
    if syncs:
        counts["cuda synchronisation"] = len(syncs)


@contextmanager
def count_cuda_syncs() -> Iterator[list]:
    """Record the synchronisations ``torch.cuda.set_sync_debug_mode`` warns about in the
    block. Yields the live list of warning messages."""
    messages: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield messages
        finally:
            torch.cuda.set_sync_debug_mode("default")
            messages.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))


def host_syncs_per_call(setup: Setup, wrappers: dict, calls: int = 20) -> dict:
    """Syncs (CUDA) or host reads (CPU) per call that each wrapper adds to the bare call."""
    x = setup.noise.clone()
    sigma = setup.sigmas[len(setup.sigmas) // 2].reshape(1)
    variants = {"inner": setup.free, **wrappers}
    for fn in variants.values():  # lazy one-time work is not a per-call cost
        fn(x, sigma)
    found = {}
    for name, fn in variants.items():
        counter = count_cuda_syncs() if setup.device.type == "cuda" else count_host_reads()
        with counter as counts:
            for _ in range(calls):
                fn(x, sigma)
        found[name] = (len(counts) if isinstance(counts, list) else sum(counts.values())) / calls
    return {name: found[name] - found["inner"] for name in wrappers}


def ab_ratios(setup: Setup, rounds: int) -> dict:
    """Per sampler, per wrapper: run time with the wrapper over without, one ratio a round."""
    import k_diffusion.sampling as sampling

    sync = _synchronizer(setup.device)
    x = setup.latent + setup.noise * setup.sigmas[0]
    result: dict = {}
    for sampler_name in SAMPLERS:
        sample = getattr(sampling, f"sample_{sampler_name}")
        variants = {"none": setup.guided, **{name: setup.wrap(name, setup.guided) for name in WRAPPERS}}

        def run(model: Callable[..., Tensor]) -> Callable[[], None]:
            return lambda: sample(model, x, setup.sigmas, extra_args=setup.extra_args, disable=True)

        for model in variants.values():
            run(model)()
        ratios: dict = {name: [] for name in WRAPPERS}
        bare = []
        for order in _rotations(list(variants), rounds):
            times = {name: _seconds(run(variants[name]), sync) for name in order}
            bare.append(times["none"])
            for name in WRAPPERS:
                ratios[name].append(times[name] / times["none"])
        result[sampler_name] = {
            "bare_run_s": statistics.median(bare),
            **{
                name: {"median": statistics.median(r), "min": min(r), "max": max(r), "ratios": r}
                for name, r in ratios.items()
            },
        }
    return result


def held_bytes(wrapper: Any) -> int:
    """Bytes of tensors the wrapper holds (buffers, attributes, and inside lists, dicts
    and dataclasses among them) beyond its ``latent``, ``noise`` and ``change_map``.
    Storage shared between two of them counts once; the inner model is not counted."""
    skip = {"latent", "noise", "change_map"}
    excluded = {getattr(wrapper, name).untyped_storage().data_ptr() for name in skip}
    seen: set = set()
    total = 0

    def visit(value: Any) -> None:
        nonlocal total
        if isinstance(value, Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in excluded and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name))

    # nn.Module keeps its buffers in _buffers and its submodules in _modules: take the
    # buffers of the wrapper and of its own submodules (the release rule's tables), not
    # the inner model's, and leave the rest of the private state.
    fields = {name: value for name, value in vars(wrapper).items() if not name.startswith("_")}
    if isinstance(wrapper, nn.Module):
        inner = {id(buffer) for buffer in wrapper.inner_model.buffers()} if isinstance(getattr(wrapper, "inner_model", None), nn.Module) else set()
        fields.update({name: buffer for name, buffer in wrapper.named_buffers() if id(buffer) not in inner})
    for name, value in fields.items():
        if name not in skip:
            visit(value)
    return total


def memory(setup: Setup) -> dict:
    """Held bytes per wrapper before and after a full Euler run."""
    import k_diffusion.sampling as sampling

    latent_bytes = setup.latent.numel() * setup.latent.element_size()
    x = setup.latent + setup.noise * setup.sigmas[0]
    out = {}
    for name in WRAPPERS:
        wrapper = setup.wrap(name, setup.guided)
        before = held_bytes(wrapper)
        sampling.sample_euler(wrapper, x, setup.sigmas, extra_args=setup.extra_args, disable=True)
        after = held_bytes(wrapper)
        out[name] = {"held_bytes": before, "held_bytes_after_run": after, "held_latents": before / latent_bytes}
    return out


def primitives_us(setup: Setup, calls: int) -> dict:
    """The candidate blend primitives on one latent, us per op: what the wrapper is built from."""
    latent, noise = setup.latent, setup.noise
    shape = (1, 1, *latent.shape[2:])
    free = torch.rand(shape, device=setup.device) < 0.5
    weight = free.to(setup.dtype)
    level = setup.sigmas[0].reshape(1, 1, 1, 1)
    ops = {
        "where_bool_broadcast": lambda: torch.where(free, noise, latent),
        "lerp_float_mask": lambda: torch.lerp(latent, noise, weight),
        "addcmul": lambda: torch.addcmul(latent, noise, level),
        "compare_map": lambda: level.float() <= weight,
        "bool_to_float_map": lambda: free.to(setup.dtype),
    }
    sync = _synchronizer(setup.device)
    out = {}
    for name, op in ops.items():
        for _ in range(10):
            op()

        def loop() -> None:
            for _ in range(calls):
                op()

        out[name] = min(_seconds(loop, sync) for _ in range(3)) / calls * 1e6
    return out


def build_ratio(setup: Setup, rounds: int, size: int = 128) -> dict:
    """Building the wrapper for a (1, 4, size, size) latent whose map has size^2 distinct
    strengths, over building it for a size-level gradient: interleaved rounds, each
    round's ratio of medians of 3 builds. The release boundaries' cost should hardly
    depend on how many distinct strengths there are."""
    import k_diffusion as K

    denoiser = K.external.CompVisDenoiser(Identity()).to(setup.device)  # interpolated: k-diffusion's default
    latent = torch.zeros(1, 4, size, size, device=setup.device)
    sigmas = denoiser.get_sigmas(20).to(setup.device, torch.float32)
    generator = torch.Generator().manual_seed(0)
    maps = {
        "gradient": torch.linspace(0, 1, size).expand(size, size),
        "distinct": torch.randperm(size * size, generator=generator).float().reshape(size, size) / (size * size - 1),
    }
    sync = _synchronizer(setup.device)

    def build_with(name: str) -> Callable[[], None]:
        return lambda: DifferentialDenoiser(denoiser, latent, maps[name], sigmas=sigmas, generator=torch.Generator(setup.device))

    seconds: dict = {name: [] for name in maps}
    for order in _rotations(list(maps), rounds):
        for name in order:
            seconds[name].append(statistics.median(_seconds(build_with(name), sync) for _ in range(3)))
    ratios = [d / g for d, g in zip(seconds["distinct"], seconds["gradient"])]
    return {
        "latent": [1, 4, size, size],
        "gradient_ms": statistics.median(seconds["gradient"]) * 1e3,
        "distinct_ms": statistics.median(seconds["distinct"]) * 1e3,
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
    }


# --- report -------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)}"


def run(device: torch.device, *, size: int, steps: int, rounds: int, calls: int) -> dict:
    """The whole benchmark; the JSON document."""
    setup = build(device, size, steps)
    wrappers = {name: setup.wrap(name, setup.free) for name in WRAPPERS}
    with torch.no_grad(), one_thread() if device.type == "cpu" else nullcontext():
        name = device_name(device)
        # On the CPU, the thread's own time: a shared machine's waits for a core are not the wrapper's cost.
        per_call = per_call_us(setup, wrappers, calls, clock=time.thread_time if device.type == "cpu" else time.perf_counter)
        syncs = host_syncs_per_call(setup, wrappers)
        ab = ab_ratios(setup, rounds)
        held = memory(setup)
        primitives = primitives_us(setup, calls)
        build_cost = build_ratio(setup, max(3, rounds // 4))
    sync_method = "torch.cuda.set_sync_debug_mode" if device.type == "cuda" else "host reads: Tensor.item, bool(tensor), Tensor.cpu"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "dtype": str(setup.dtype).removeprefix("torch."),
        "latent_shape": list(setup.latent.shape),
        "steps": steps,
        "rounds": rounds,
        "calls": calls,
        "inner_us_per_call": per_call["inner"],
        "sync_method": sync_method,
        "primitives_us": primitives,
        "build": build_cost,
        "wrappers": {
            name: {
                "class": WRAPPERS[name],
                "per_call_us": per_call[name],
                "host_syncs_per_call": syncs[name],
                "ab": {s: ab[s][name] for s in SAMPLERS},
                **held[name],
            }
            for name in WRAPPERS
        },
        "bare_run_s": {s: ab[s]["bare_run_s"] for s in SAMPLERS},
    }


def table(report: dict) -> str:
    """The report as a fixed-width text table."""
    head = (
        f"{report['device_name']} ({report['device']}, {report['dtype']}), latent {tuple(report['latent_shape'])}, "
        f"{report['steps']} steps, {report['rounds']} A/B rounds; bare near-free call "
        f"{report['inner_us_per_call']:.1f} us; bare run "
        + ", ".join(f"{s} {t * 1e3:.0f} ms" for s, t in report["bare_run_s"].items())
    )
    syncs = "host syncs/call" if report["device"] == "cuda" else "host reads/call"
    columns = ["wrapper", "per-call us", syncs] + [f"{s} A/B median [min, max]" for s in SAMPLERS] + ["held bytes (latents)"]
    rows = []
    for values in report["wrappers"].values():
        ab = [f"{v['median']:.4f} [{v['min']:.3f}, {v['max']:.3f}]" for v in values["ab"].values()]
        held = f"{values['held_bytes']} ({values['held_latents']:.2f})"
        if values["held_bytes_after_run"] != values["held_bytes"]:
            held += f" -> {values['held_bytes_after_run']} after a run"
        rows.append([values["class"], f"{values['per_call_us']:.1f}", f"{values['host_syncs_per_call']:g}", *ab, held])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    lines.append("primitives, us/op: " + ", ".join(f"{k} {v:.1f}" for k, v in report["primitives_us"].items()))
    per_call = {name: values["per_call_us"] for name, values in report["wrappers"].items()}
    lines.append(f"per call, faithful over binary: {per_call['faithful'] / per_call['binary']:.2f} (target <= 1.2)")
    build = report["build"]
    lines.append(
        f"building the wrapper, latent {tuple(build['latent'])}: {build['latent'][-1] ** 2} distinct strengths "
        f"{build['distinct_ms']:.1f} ms, a {build['latent'][-1]}-level gradient {build['gradient_ms']:.1f} ms; "
        f"ratio median {build['ratio']['median']:.2f} [{build['ratio']['min']:.2f}, {build['ratio']['max']:.2f}] (target <= 3)"
    )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m samplers.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", metavar="OUT.json", help="also write the report here (atomically)")
    parser.add_argument("--rounds", type=positive, help=f"interleaved A/B rounds per sampler (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--calls", type=positive, help=f"timed calls per per-call round (default: {DEFAULT_CALLS})")
    parser.add_argument("--steps", type=positive, default=20, help="sampling steps (default 20)")
    parser.add_argument("--size", type=positive, default=64, help="latent height and width (default 64)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or DEFAULT_ROUNDS[args.device]
    args.calls = args.calls or DEFAULT_CALLS[args.device]
    return args


def check_args(args: argparse.Namespace) -> None:
    """What argparse cannot check; InputError names the flag."""
    if args.steps < 2:
        raise InputError(f"--steps must be at least 2, got {args.steps}")
    if args.device == "cuda":
        require_cuda("--device cuda")
    check_json(args.json)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark, print the table, write the JSON; 2 on bad input."""

    def work() -> None:
        args = parse_args(argv)
        check_args(args)
        report = run(torch.device(args.device), size=args.size, steps=args.steps, rounds=args.rounds, calls=args.calls)
        print(table(report))
        if args.json is not None:
            write_json(args.json, report)

    return command_status(PROG, work, "interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
