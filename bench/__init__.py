"""Benchmarks of a real service process: memory under a flood of CLI output,
and the overhead of a chat completion over a direct run of the CLI.

Run with `make bench` (or `python -m bench [--json]`); see BENCHMARKS.md.
"""
