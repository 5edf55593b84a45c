"""WanMeter Estimator node: GPU, price and volume widgets; the estimate itself is shown live by
the web extension (web/wanmeter.js via POST /wanmeter/estimate). When queued it computes the
same estimate server-side from the prompt, so API users get it in the node's ui output too."""
from __future__ import annotations

from typing import Any

from . import common as c
from . import estimate_adapter as ea


class WanMeterEstimator:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterEstimator")

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = c.CATEGORY
    DESCRIPTION = ("Shows peak VRAM, time and cost per video for the WanMeter nodes in this graph before you "
                   "queue, the cheapest GPUs that fit, and measured numbers after a run.")

    def run(self, gpu: str, price_per_hour: float, videos_per_month: int, budget_gib: float = 0.0,
            prompt: dict | None = None, unique_id: str | None = None, budget_gb: float | None = None):
        """The same estimate the canvas shows, from the queued prompt and this node's widgets."""
        from ..wanmeter.errors import WanMeterError
        from ..wanmeter.estimator.reply import estimate_graph

        budget = budget_gib if budget_gb is None else budget_gb
        over = {"gpu": gpu, "price_per_hour": price_per_hour or None, "videos_per_month": videos_per_month,
                "budget_gib": budget or None}
        try:
            body = estimate_graph(prompt or {}, overrides=over, local=ea.local_gpu(), resolve=ea.resolve_model)
        except WanMeterError as e:
            body = {"error": str(e)}
        return {"ui": {"wanmeter_estimate": [body], "text": [ea.summary(body)]}}


NODE_CLASS_MAPPINGS = {"WanMeterEstimator": WanMeterEstimator}
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterEstimator")
