"""The names a user chooses from: clocks, release rules, noise schedules, composites,
map presets, fills, crops and executors. No torch import, so that the command line can check its arguments against
them before loading anything heavy; the modules that implement each choice import its
names from here. (Samplers have a table of their own: :mod:`.sampler_table`.)"""

CLOCKS = ("timestep", "step", "sigma")
# The tools whose rule compat= reproduces exactly (compat.py holds each policy).
COMPAT_NAMES = ("comfyui", "diffusers")
RELEASES = ("smooth", "binary", "faithful")
# k-diffusion's two, the model's own, and ComfyUI's scheduler names (computed as ComfyUI
# computes them, on a model with discrete training levels).
COMFYUI_SCHEDULES = ("simple", "sgm_uniform", "normal", "ddim_uniform", "beta", "linear_quadratic", "kl_optimal")
SCHEDULES = ("karras", "exponential", "model", *COMFYUI_SCHEDULES)
COMPOSITES = ("difference", "mask", "none")
PRESETS = ("gradient-x", "gradient-y", "radial", "full", "none")
# What the model sees under the changing region (fills.py), whether to crop to the change
# (cropping.py), where a folder's images run (executors.py).
FILLS = ("original", "noise", "blur", "mean")
CROPS = ("auto", "off")
EXECUTORS = ("local", "ray")
