"""The benchmark suite: real service processes measured against baselines run
in the same loop, interleaved (`make bench`, `python -m bench [--only NAME]
[--json]`); BENCHMARKS.md has the figures and how each is taken."""
