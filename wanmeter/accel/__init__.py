"""Speed paths for Wan2.2 DiTs on NVIDIA GPUs: fp8 compute, attention policy, regional compile,
step caching, LoRA merging.

Public API:
    apply_fast_paths(model, *, fp8_compute, compile, cache) -> report dict  (the runtime's hook)
    best_attention_backend(device_name, capability, *, want_sage=False) -> runtime attention name
    swap_fp8_linears, Fp8Linear, fp8_matmul_supported, quantize_rows, quantize_weight
    compile_blocks(model)
    enable_step_cache / disable_step_cache / reset_step_cache / denoise_context, CACHE_KINDS
    merge_lora / merge_loras_atomic / plan_lora_merge / attach_lora / lora_to_diffusers / read_lora / lora_expert_hint
"""
from .attention_policy import best_attention_backend, best_attention_for, sage_available
from .fast_paths import apply_fast_paths, compile_blocks
from .fp8_linear import Fp8Linear, fp8_matmul_supported, fp8_target_names, quantize_rows, quantize_weight, swap_fp8_linears
from .lora import attach_lora, lora_expert_hint, lora_to_diffusers, merge_lora, merge_loras_atomic, plan_lora_merge, read_lora
from .step_cache import CACHE_KINDS, denoise_context, disable_step_cache, enable_step_cache, reset_step_cache

__all__ = [
    "apply_fast_paths", "compile_blocks", "best_attention_backend", "best_attention_for", "sage_available",
    "Fp8Linear", "fp8_matmul_supported", "fp8_target_names", "quantize_rows", "quantize_weight", "swap_fp8_linears",
    "attach_lora", "lora_expert_hint", "lora_to_diffusers", "merge_lora", "merge_loras_atomic", "plan_lora_merge", "read_lora",
    "CACHE_KINDS", "denoise_context", "disable_step_cache", "enable_step_cache", "reset_step_cache",
]
