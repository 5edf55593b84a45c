"""WanMeter Text Encode: prompts -> native ComfyUI CONDITIONING."""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c
from .conditioning import to_conditioning

# The official default negative prompt (Wan2.2 wan/configs/shared_config.py, sample_neg_prompt).
OFFICIAL_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


class WanMeterTextEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "text_encoder": (c.WANMETER_TEXT_ENCODER, {"tooltip": "From WanMeter Text Encoder Loader."}),
                "positive": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                             "tooltip": "What the video shows. Wan2.2 follows long, concrete descriptions "
                             "(subject, motion, camera, light)."}),
                "negative": ("STRING", {"multiline": True, "dynamicPrompts": True,
                             "default": OFFICIAL_NEGATIVE_PROMPT,
                             "tooltip": "What to avoid. The default is the official Wan2.2 negative prompt "
                             "(Chinese), which the models were tuned with."}),
            }
        }

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
NODE_DISPLAY_NAME_MAPPINGS = {"WanMeterTextEncode": "WanMeter Text Encode"}
