"""The timing and memory helpers of bench/ (bench/speed.py times its models in turns instead of `median_ms`)."""

import statistics
import subprocess
import sys
import time
from pathlib import Path


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


def process_memory_mib(field: str = "VmHWM") -> float:
    """This process's resident memory from /proc/self/status: `VmHWM` its peak so far, `VmRSS` now. Not
    getrusage's ru_maxrss: Linux carries that over from the parent through fork + exec, so a child of a large
    benchmark process would report the parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:"))) / 1024


def in_fresh_process(module: str, function: str, *args) -> float:
    """`bench/<module>.py`'s `function(*args)` run in a fresh Python (so that its memory is its own), its result
    read back from the last line printed."""
    bench = str(Path(__file__).resolve().parent)
    call = f"{module}.{function}({', '.join(map(repr, args))})"
    code = f"import sys; sys.path.insert(0, {bench!r}); import {module}; print({call})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])
