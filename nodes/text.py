"""WanMeter Text Encode: prompts -> native ComfyUI CONDITIONING."""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c
from .conditioning import to_conditioning

# The official Wan2.2 negative prompt (wan/configs/shared_config.py, sample_neg_prompt): declared once, as
# the default of the node's widget in wanmeter/data/node_schema.json.
OFFICIAL_NEGATIVE_PROMPT = c.schema.default("WanMeterTextEncode", "negative")


class WanMeterTextEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterTextEncode")

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive prompt embedding, native CONDITIONING (usable by native nodes too).",
                       "Negative prompt embedding, native CONDITIONING.")
    FUNCTION = "encode"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Encode the positive and negative prompts with umt5-xxl, as the official Wan2.2 code does."

    def encode(self, text_encoder, positive: str, negative: str):
        import torch

        if text_encoder is None or not hasattr(text_encoder, "encode"):
            raise WanMeterError("text_encoder is not a WanMeter text encoder. Connect WanMeter Text Encoder Loader.")
        c.check_interrupt()
        with torch.inference_mode():
            emb = text_encoder.encode([positive, negative])
        out = emb.to(device="cpu", dtype=torch.float32)  # CONDITIONING lives on the CPU between nodes
        del emb
        c.release_memory()
        return (to_conditioning(out[0:1].clone()), to_conditioning(out[1:2].clone()))


NODE_CLASS_MAPPINGS = {"WanMeterTextEncode": WanMeterTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterTextEncode")
