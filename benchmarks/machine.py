"""What the benchmarks say about the machine they ran on."""

import platform


def cpu_name():
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"
