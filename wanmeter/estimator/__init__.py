"""VRAM / RAM / time / cost estimator for Wan2.2 runs (pure Python: no torch import).

Public API:
    Workload, Plan                      what to generate, how to run it
    load_gpus(), get_gpu(), detect_gpu_name(), GpuSpec
    estimate(workload, plan, gpu, prices=None) -> Estimate
    suggest_fixes(workload, plan, gpu) -> [Fix]      when it does not fit
    rank_gpus(workload, plan) -> [Ranked]            the "which GPU" guide
    validate_settings(payload), workload_from_settings(settings)   the one settings vocabulary
    estimate_reply(settings) / estimate_graph(workflow) -> dict    the one estimate every surface shows
    workload_from_ui_workflow(wf) -> (Workload, Plan, settings)
"""
from .calibration import Calibration, load_calibration
from .estimate import Estimate, Prices, estimate
from .fixes import Fix, Ranked, rank_gpus, suggest_fixes
from .flops import DiTShape, ForwardFlops, forward_flops, video_tokens
from .gpus import GpuSpec, detect_gpu_name, get_gpu, load_gpus
from .reply import estimate_graph, estimate_reply, workload_from_ui_workflow
from .settings import validate_settings, workload_from_settings
from .workload import Plan, Workload

__all__ = [
    "Calibration", "load_calibration", "Estimate", "Prices", "estimate", "Fix", "Ranked", "rank_gpus",
    "suggest_fixes", "DiTShape", "ForwardFlops", "forward_flops", "video_tokens", "GpuSpec", "detect_gpu_name",
    "get_gpu", "load_gpus", "estimate_reply", "estimate_graph", "validate_settings", "workload_from_settings",
    "workload_from_ui_workflow", "Plan", "Workload",
]
