"""WanMeter Estimator node: GPU, price and volume widgets; the estimate itself is shown live by
the web extension (web/wanmeter.js via POST /wanmeter/estimate). When queued it computes the
same estimate server-side from the prompt, so API users get it in the node's ui output too."""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c
from . import estimate_adapter as ea


class WanMeterEstimator:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "gpu": (ea.gpu_choices(), {"default": ea.AUTO_GPU, "tooltip": "GPU to estimate for. auto: the GPU "
                        "this ComfyUI runs on (detected), or an H100 SXM when there is none."}),
                "price_per_hour": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                   "round": 0.001, "tooltip": "$ per GPU-hour; 0 = the table's on-demand price "
                                   "for this GPU. Cloud prices move: set yours."}),
                "videos_per_month": ("INT", {"default": 100, "min": 0, "max": 10_000_000, "tooltip": "For the "
                                     "monthly cost line."}),
                "budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 2048.0, "step": 0.5, "tooltip": "VRAM "
                              "you can use, in GB; 0 = all of this GPU's VRAM."}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = c.CATEGORY
    DESCRIPTION = ("Shows peak VRAM, time and cost per video for the WanMeter nodes in this graph before you "
                   "queue, the cheapest GPUs that fit, and measured numbers after a run.")

    def run(self, gpu: str, price_per_hour: float, videos_per_month: int, budget_gb: float,
            prompt: dict | None = None, unique_id: str | None = None):
        from .routes import estimate_reply

        settings = ea.settings_from_prompt(prompt or {}, estimator_id=unique_id)
        if settings is None:
            body: dict[str, Any] = {"error": "No WanMeter Model Loader in this prompt: nothing to estimate."}
        else:
            settings.update(gpu=gpu, price_per_hour=price_per_hour, videos_per_month=videos_per_month,
                            budget_gb=budget_gb)
            try:
                _, body = estimate_reply(settings)
            except WanMeterError as e:
                body = {"error": str(e)}
        return {"ui": {"wanmeter_estimate": [body], "text": [ea.summary(body)]}}


NODE_CLASS_MAPPINGS = {"WanMeterEstimator": WanMeterEstimator}
NODE_DISPLAY_NAME_MAPPINGS = {"WanMeterEstimator": "WanMeter Estimator"}  # found by the node search as typed
