"""Peak resident memory of this process (system RAM), for loader checks and the GPU bench.

Why: the first thing that breaks on a 32 GB machine with two 14B experts is system RAM (peers.md),
and a loader that briefly holds two copies of a model doubles it. Linux keeps the peak in
/proc/self/status (VmHWM) and lets a process reset it (writing 5 to /proc/self/clear_refs), so
a load can be measured on its own; elsewhere ru_maxrss (never reset) is the fallback.
"""
from __future__ import annotations

import resource
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size now (anonymous + file-backed pages, e.g. a memory-mapped checkpoint)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Highest resident set size since start (or since the last reset_peak_rss)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def release_free_heap() -> bool:
    """Give memory that was freed but kept by glibc's allocator back to the OS (malloc_trim), so
    RSS measures live data; False where that is not possible (not glibc)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the peak to the current RSS (Linux >= 4.0); False when not possible here."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class RssWindow:
    start_bytes: int = 0
    peak_bytes: int = 0
    end_bytes: int = 0
    reset: bool = False

    @property
    def peak_growth_bytes(self) -> int:
        """How far the peak rose above the RSS at the start of the window."""
        return max(0, self.peak_bytes - self.start_bytes)


@contextmanager
def measure_rss() -> Iterator[RssWindow]:
    """with measure_rss() as m: load(...)  ->  m.peak_growth_bytes (peak reset at entry when possible).

    Freed heap memory is released first, so memory a previous step freed but glibc kept cannot
    hide the growth of this window.
    """
    import gc

    gc.collect()
    release_free_heap()
    w = RssWindow()
    w.reset = reset_peak_rss()
    w.start_bytes = current_rss_bytes()
    try:
        yield w
    finally:
        w.peak_bytes = peak_rss_bytes()
        w.end_bytes = current_rss_bytes()
