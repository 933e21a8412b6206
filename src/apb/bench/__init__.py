"""Benchmarks of apb's kernels and packed models against peers measured in the same run."""
