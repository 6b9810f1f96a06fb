"""What each k-diffusion sampler needs from the code that runs it: one table.

k-diffusion's samplers share one signature, ``sample_<name>(model, x, sigmas, ...)``,
but not one contract: two take a sigma range instead of a schedule, one chooses its own
steps, two cannot take a first step that goes straight to 0, and several call the model
twice per step. :func:`differential_edit`, the command line and ``samplers/`` all read
these facts here. No torch import: the command line checks its arguments against this
table before loading anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampler:
    """One k-diffusion sampler, ``k_diffusion.sampling.sample_<name>``.

    ``takes_range``: called as ``(model, x, sigma_min, sigma_max, ...)`` and stops at
    ``sigma_min`` with that much noise left (the wrapper's ``finish`` takes the rest);
    such a sampler has no schedule, so no step clock. ``own_steps``: chooses its step
    count itself, so a step count asked of it is ignored. ``first_step_to_zero_fails``:
    k-diffusion 0.1.1.post1 reads its step size before setting it when the first step
    goes to 0 (a one-step schedule: ``UnboundLocalError``). ``calls_per_step``: model
    calls per schedule step (0 where the sampler chooses them).
    ``second_call_at_next_level``: a step's second call comes at the next schedule level,
    the sigma of the next step's first call, not between the two as DPM2's does: Heun's,
    and the ancestral DPM2's and DPM++ 2S's, whose midpoint sqrt(sigma_i * sigma_down)
    is sigma_{i+1} (eta = 1).
    """

    name: str
    calls_per_step: int = 1
    takes_range: bool = False
    own_steps: bool = False
    first_step_to_zero_fails: bool = False
    second_call_at_next_level: bool = False

    @property
    def has_schedule(self) -> bool:
        """Whether it runs a list of sigmas, which the step clock counts."""
        return not self.takes_range


TABLE: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        Sampler("euler"),
        Sampler("euler_ancestral"),
        Sampler("heun", calls_per_step=2, second_call_at_next_level=True),
        Sampler("dpm_2", calls_per_step=2),
        Sampler("dpm_2_ancestral", calls_per_step=2, second_call_at_next_level=True),
        Sampler("lms"),
        Sampler("dpmpp_2s_ancestral", calls_per_step=2, second_call_at_next_level=True),
        Sampler("dpmpp_sde", calls_per_step=2),
        Sampler("dpmpp_2m"),
        Sampler("dpmpp_2m_sde", first_step_to_zero_fails=True),
        Sampler("dpmpp_3m_sde", first_step_to_zero_fails=True),
        Sampler("dpm_fast", calls_per_step=0, takes_range=True),
        Sampler("dpm_adaptive", calls_per_step=0, takes_range=True, own_steps=True),
    )
}

SAMPLERS = tuple(TABLE)
# A1111's and Forge's names for the same samplers (their schedule suffix, "Karras", is
# a --schedule of its own here).
A1111_NAMES = {
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "DPM2": "dpm_2",
    "DPM2 a": "dpm_2_ancestral",
    "LMS": "lms",
    "DPM++ 2S a": "dpmpp_2s_ancestral",
    "DPM++ SDE": "dpmpp_sde",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 3M SDE": "dpmpp_3m_sde",
    "DPM fast": "dpm_fast",
    "DPM adaptive": "dpm_adaptive",
}
RANGE_SAMPLERS = tuple(name for name, sampler in TABLE.items() if sampler.takes_range)
OWN_STEPS = tuple(name for name, sampler in TABLE.items() if sampler.own_steps)
DEFAULT_STEPS = 20
# torch's generators take seeds in [0, 2**64).
MAX_SEED = 2**64 - 1


# The schedules A1111 names after the sampler ("DPM++ 2M Karras").
A1111_SCHEDULES = ("karras", "exponential")


def sampler_named(name: str) -> tuple[Sampler, "str | None"]:
    """The table's entry for ``name``, and the schedule the name implies (or None).

    ``name`` is a short name (``dpmpp_2m``) or an A1111-style one (``DPM++ 2M``,
    ``Euler a``, ``DPM++ 2M Karras``: case and spaces are not significant, and a
    trailing ``Karras`` or ``Exponential`` names the schedule). ValueError naming the
    samplers otherwise.
    """
    if not isinstance(name, str):
        raise TypeError(f"sampler must be a str (a k-diffusion sampler's short name), got {type(name).__name__}")
    if name in TABLE:
        return TABLE[name], None
    words = name.lower().split()
    schedule = words.pop() if len(words) > 1 and words[-1] in A1111_SCHEDULES else None
    folded = {" ".join(alias.lower().split()): short for alias, short in A1111_NAMES.items()}
    short = folded.get(" ".join(words))
    if short is None:
        raise ValueError(
            f"unknown sampler {name!r}; samplers: {', '.join(SAMPLERS)} (or A1111's names: "
            f"{', '.join(A1111_NAMES)}, optionally followed by Karras or Exponential)"
        )
    return TABLE[short], schedule


def ignored_steps(sampler: Sampler, steps: "int | None") -> str:
    """What to say of a step count given to ``sampler``: '' where it runs them; that it
    is ignored where the sampler chooses its own."""
    if steps is not None and sampler.own_steps:
        return f"sampler={sampler.name} chooses its own steps: steps={steps} is ignored"
    return ""


def clock_problem(sampler: Sampler, clock: str) -> str:
    """Why ``clock`` cannot time ``sampler``: '' when it can. The step clock counts
    schedule steps, which a range sampler does not have."""
    if clock == "step" and not sampler.has_schedule:
        return f"the step clock counts schedule steps, and {sampler.name} runs a sigma range without them; use the timestep or sigma clock"
    return ""
