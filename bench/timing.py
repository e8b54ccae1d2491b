"""The one timing helper of the micro-benchmarks in bench/ (bench/speed.py times its models in turns instead)."""

import statistics
import time


def median_ms(fn, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of `fn()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
