"""Sampler comparison experiments and benchmarks for kdiff-differential."""
