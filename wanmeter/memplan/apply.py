"""Turn a Plan (the estimator's description of how to run) into loader and runtime arguments.

Why a separate step: plan_for is pure arithmetic and runs in the browser route and the CLI;
applying needs torch and touches three owners' APIs (load_dit, RuntimeOptions, the text
encoder / VAE loaders). Keeping the mapping in one function means the node, the CLI and the GPU
bench run exactly the plan that was estimated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attention_kernels import runtime_name
from ..estimator import Plan



@dataclass(frozen=True)
class AppliedPlan:
    """Arguments for the loaders and the runtime, derived from one Plan.

    dit_weight_dtype: weight_dtype for load_dit (None for GGUF: the file's quantization is kept).
    offload / blocks_to_stream / attention: RuntimeOptions fields.
    text_encoder_device: "cpu" or "gpu"; text_encoder_unload: free it from the GPU after encoding.
    pinned_swap: RuntimeOptions.pinned_swap (experts parked in pinned RAM; plan_for turns it on when RAM fits).
    """

    dit_weight_dtype: str | None
    offload: str
    blocks_to_stream: int
    attention: str
    text_encoder_device: str
    text_encoder_dtype: str
    text_encoder_unload: bool
    vae_tiled: bool
    vae_dtype: str
    gguf_type: str | None = None
    pinned_swap: bool = False

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for wanmeter.loader.load_dit / load_expert_pair."""
        return {} if self.dit_weight_dtype is None else {"weight_dtype": self.dit_weight_dtype}

    def runtime_options(self, device: str = "auto"):
        """A wanmeter.runtime.RuntimeOptions for the sampler's bundle."""
        from ..runtime import RuntimeOptions

        return RuntimeOptions(device=device, offload=self.offload, blocks_to_stream=self.blocks_to_stream,
                              attention=self.attention, pinned_swap=self.pinned_swap)


def apply_plan(plan: Plan) -> AppliedPlan:
    """Map a Plan (e.g. AutoPlan.plan) onto loader/runtime arguments."""
    streamed = plan.blocks_to_stream if plan.offload == "blocks" else 0
    return AppliedPlan(
        dit_weight_dtype=None if plan.is_gguf else plan.weight_dtype,
        offload=plan.offload if streamed or plan.offload != "blocks" else "model",
        blocks_to_stream=streamed,
        attention=runtime_name(plan.attention),
        text_encoder_device=plan.text_encoder_device,
        text_encoder_dtype=plan.text_encoder_dtype,
        text_encoder_unload=plan.text_encoder_unload,
        vae_tiled=plan.vae_tiled,
        vae_dtype=plan.vae_dtype,
        gguf_type=plan.weight_dtype if plan.is_gguf else None,
        pinned_swap=plan.pinned_swap and plan.offload != "none",
    )
