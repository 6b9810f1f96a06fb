"""The wrapper and its rules: :class:`~.denoiser.DifferentialDenoiser` around any
k-diffusion denoiser, the clocks and release rules it runs, the compatibility policies,
the sampler table, noise schedules, guidance, and one sampler run
(:func:`~.sampling.differential_edit`). Torch only: no pixels, no files."""
