"""Benchmarks (`make bench`): JSON on stdout and in bench/results/."""
