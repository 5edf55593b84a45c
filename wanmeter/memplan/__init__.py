"""Fitting every variant on small GPUs: the automatic memory plan and its helpers.

Public API:
    plan_for(workload, free_vram_bytes, free_ram_bytes, gpu, *, source="bf16", base=None) -> AutoPlan
        the fastest plan that fits (AutoPlan.plan / .estimate / .description); WanMeterError if none
    loader_plan / sampler_plan / runtime_plan   offload=auto as the loader and the sampler decide it, and
        both in a row (what every estimate shows)
    apply_plan(plan) -> AppliedPlan   loader kwargs + RuntimeOptions + text encoder / VAE settings
    weight_candidates(source), describe(plan, estimate, workload)
    free_memory() -> (free VRAM, free RAM, GPU key); source_of(DiTInfo) -> plan_for's `source`
    measure_rss(), peak_rss_bytes(), current_rss_bytes(), reset_peak_rss()   system RAM
    quantize_int8_weight_only(model), torchao_available()                   optional torchao path
"""
from .apply import AppliedPlan, apply_plan
from .auto import TUNE_ALL, TUNE_RUNTIME, AutoPlan, describe, plan_for, weight_candidates
from .runtime import loader_plan, runtime_plan, sampler_plan
from .int8 import quantize_int8_weight_only, torchao_available
from .sources import free_memory, free_ram_bytes, source_of
from .rss import current_rss_bytes, measure_rss, peak_rss_bytes, release_free_heap, reset_peak_rss

__all__ = ["free_memory", "free_ram_bytes", "source_of", "AutoPlan", "AppliedPlan", "apply_plan", "describe", "plan_for", "loader_plan", "sampler_plan", "runtime_plan",
           "TUNE_ALL", "TUNE_RUNTIME", "weight_candidates",
           "quantize_int8_weight_only", "torchao_available", "current_rss_bytes", "measure_rss",
           "peak_rss_bytes", "release_free_heap", "reset_peak_rss"]
