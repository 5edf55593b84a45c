"""The Wan2.2 denoising loop: schedulers, CFG, two-expert switch, I2V / TI2V conditioning.

Public API: sample(bundle, positive, negative, req, callback=None, *, stats=None) -> raw latent;
WanModelBundle, SampleRequest, SampleStats, make_noise, make_scheduler.
"""
from .bundle import WanModelBundle
from .loop import make_noise, sample
from .request import SCHEDULERS, SampleRequest
from .schedule import make_scheduler
from .stats import SampleStats

__all__ = ["WanModelBundle", "SampleRequest", "SampleStats", "sample", "make_noise", "make_scheduler", "SCHEDULERS"]
