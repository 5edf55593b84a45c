"""Timing and peak-memory report of one sampling run (filled in place, so interrupted runs report too)."""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field

import torch


def process_rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class SampleStats:
    """seconds per step and peak memory of a run.

    peak_memory_bytes is torch.cuda.max_memory_allocated on CUDA (reset at the start of the run),
    and the largest process RSS seen at step boundaries on CPU (memory_kind says which).
    step_seconds include an expert swap when one happened in that step; swap_seconds isolates it.
    """

    device: str = ""
    steps_total: int = 0
    steps_done: int = 0
    step_seconds: list[float] = field(default_factory=list)
    expert_per_step: list[int] = field(default_factory=list)
    swaps: int = 0
    swap_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    interrupted: bool = False

    @property
    def seconds_per_step(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else 0.0

    def begin(self, device: torch.device) -> None:
        self.device = str(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.memory_kind = "cuda_max_allocated"
        else:
            self.memory_kind = "process_rss"
            self.peak_memory_bytes = process_rss_bytes()

    def sample_memory(self, device: torch.device) -> None:
        if device.type == "cuda":
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        else:
            self.peak_memory_bytes = max(self.peak_memory_bytes, process_rss_bytes())

    def summary(self) -> str:
        mem = self.peak_memory_bytes / 2**30
        kind = "VRAM" if self.memory_kind.startswith("cuda") else "RAM (RSS)"
        s = f"{self.steps_done}/{self.steps_total} steps, {self.seconds_per_step:.3f} s/step, peak {kind} {mem:.2f} GiB"
        if self.swaps:
            s += f", {self.swaps} expert swap(s) {self.swap_seconds:.2f} s"
        return s + (" (interrupted)" if self.interrupted else "")
