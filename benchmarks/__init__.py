"""Benchmark harness (issue 10): every figure measured side by side with its reference in one process.

Run ``python -m benchmarks.run [--quick] [--only NAME] [--device cpu|cuda] [--threads N]``.
"""
