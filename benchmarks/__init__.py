"""Benchmark suite of enso-tracker: ``python -m benchmarks [--quick] [--output PATH]``.

Scenarios (one module each): hot path, end-to-end throughput, memory per queued event,
caller overhead, exit time, and the same measurements for peer SDKs where installed.
Servers run in a child process (``benchmarks._serve``) so that they do not compete
for the measured process's GIL; see ``benchmarks/NOTES.md`` for the analysis.
"""
