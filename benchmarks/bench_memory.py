"""CPU memory of a benchmark child process: RSS now, its high-water mark, and a reset of it.

With glibc's default, dynamic mmap threshold, freed large buffers stay in the heap and the RSS
follows the allocator's history (first-pass peaks of one autoencoder swung by 18 MiB between runs).
Children started with ``MEMORY_ENV`` return every block of >= 64 KiB to the OS when it is freed,
so after a warm-up pass and ``reset_peak_rss()``, ``peak_rss_mib() - rss_mib()`` tracks the live
tensors of one step (repeat runs agree within 0.2 MiB). It slows steps by page faults: time
measurements run without it.
"""

from __future__ import annotations

import resource

MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def rss_mib() -> float:
    """This process's current resident set size."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0: write 5 to clear_refs);
    False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM of its address space. Not ``ru_maxrss``, which on
    Linux also carries the parent's RSS at fork/exec (the exec'd process inherits it); that is
    only the fallback where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
