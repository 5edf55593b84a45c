"""S2V-14B nodes: audio -> wav2vec2 features per clip, and the multi-clip S2V sampler.

Thin wrappers around wanmeter.s2v. The sampler returns IMAGE frames plus the AUDIO cut to the
same span, ready for the native CreateVideo -> SaveVideo.
"""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c
from .sampler import StepMeter, stats_text

WANMETER_S2V_AUDIO = "WANMETER_S2V_AUDIO"
AUDIO_DEVICES = ["gpu", "cpu"]


class WanMeterS2VAudio:
    """Encode speech with wav2vec2-large-xlsr-53-english into per-clip S2V features."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "audio": ("AUDIO", {"tooltip": "Speech from a native LoadAudio node (any rate, any channels)."}),
                "audio_encoder": (c.list_models("audio_encoders"), {"tooltip": "wav2vec2_large_english_fp16.safetensors "
                                  "in models/audio_encoders."}),
                "audio_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05,
                                "tooltip": "Strength of the audio features (1.0 = official)."}),
                "device": (AUDIO_DEVICES, {"default": "gpu", "tooltip": "Where wav2vec2 runs (it is unloaded after)."}),
                "clips": ("INT", {"default": 0, "min": 0, "max": 120, "tooltip": "Clips of 80 frames (5 s) to "
                          "generate; 0 = enough to cover the whole audio."}),
            },
            "hidden": {"prompt": "PROMPT"},
        }

    RETURN_TYPES = (WANMETER_S2V_AUDIO,)
    RETURN_NAMES = ("s2v_audio",)
    FUNCTION = "encode"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Turn speech into S2V-14B audio conditioning (wav2vec2 features per video frame, per 5 s clip)."

    def encode(self, audio, audio_encoder: str, audio_scale: float, device: str, clips: int, prompt=None):
        import torch

        from ..wanmeter.s2v.audio import check_audio, encode_audio, load_wav2vec2

        if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
            raise WanMeterError("audio is not a ComfyUI AUDIO: connect a LoadAudio node.")
        check_audio(audio["waveform"], int(audio["sample_rate"]))  # refuse before anything loads
        path = c.resolve_model("audio_encoders", audio_encoder, what="audio encoder")
        c.check_prompt_parts(prompt)  # this wav2vec2 matches the S2V model picked in the prompt (headers)
        dev = c.comfy_device() if device == "gpu" else torch.device("cpu")
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        model = None
        try:
            model = load_wav2vec2(path, device=dev, dtype=dtype)
            with torch.inference_mode():
                cond = encode_audio(audio["waveform"], int(audio["sample_rate"]), model,
                                    audio_scale=float(audio_scale), max_clips=int(clips) or None)
        finally:
            del model
            c.release_memory()
        return (cond,)


class WanMeterS2VSampler:
    """Generate an S2V-14B video clip by clip (80 frames each) from a reference image and speech."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": (c.WANMETER_MODEL, {"tooltip": "WanMeter Model Loader with wan2.2_s2v_14B_*.safetensors."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt from WanMeter Text Encode (umt5-xxl)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; the uncond pass also zeroes the audio."}),
                "s2v_audio": (WANMETER_S2V_AUDIO, {"tooltip": "WanMeter S2V Audio: speech features for every clip."}),
                "ref_image": ("IMAGE", {"tooltip": "The person to animate (resized and centre-cropped)."}),
                "vae": (c.WANMETER_VAE, {"tooltip": "wan_2.1_vae.safetensors."}),
                "width": ("INT", {"default": 832, "min": 64, "max": 2048, "step": 16,
                          "tooltip": "Video width (multiple of 16). Official: 832x480, 1024x704 and portrait."}),
                "height": ("INT", {"default": 480, "min": 64, "max": 2048, "step": 16, "tooltip": "Video height."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip": "Steps per clip (official: 40)."}),
                "cfg": ("FLOAT", {"default": 4.5, "min": 1.0, "max": 20.0, "step": 0.1,
                        "tooltip": "1.0 disables CFG (one pass per step)."}),
                "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 20.0, "step": 0.1,
                          "tooltip": "Flow shift (official S2V: 3)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                         "tooltip": "Clip r uses seed + r (official)."}),
                "drop_first_motion": ("BOOLEAN", {"default": True, "tooltip": "Official: the first clip has no "
                                      "motion history (and loses its first 3 frames)."}),
            },
            "optional": {
                "pose_video": ("IMAGE", {"tooltip": "Optional pose frames driving the motion (16 fps)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("frames", "audio")
    FUNCTION = "sample"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Speech-to-video with Wan2.2 S2V-14B; outputs frames and the matching audio for CreateVideo (16 fps)."

    def sample(self, model, positive, negative, s2v_audio, ref_image, vae, width: int, height: int, steps: int,
               cfg: float, shift: float, seed: int, drop_first_motion: bool, pose_video=None,
               unique_id: str | None = None):
        import comfy.utils

        from ..wanmeter.s2v.sampler import sample_s2v
        from .conditioning import from_conditioning

        net = getattr(model, "model", model)
        if not (hasattr(net, "casual_audio_encoder") and hasattr(net, "frame_packer")):
            raise WanMeterError("model is not Wan2.2 S2V-14B. Load wan2.2_s2v_14B_*.safetensors with WanMeter Model "
                                "Loader (use WanMeter Sampler for T2V/I2V/TI2V).")
        if vae is None or getattr(vae, "family", "wan21") != "wan21":
            raise WanMeterError("S2V-14B uses the Wan2.1 VAE: load wan_2.1_vae.safetensors with WanMeter VAE Loader.")
        pos = from_conditioning(positive, name="positive")[:1]
        neg = from_conditioning(negative, name="negative")[:1]
        clips = getattr(s2v_audio, "num_clips", 1)
        pbar = comfy.utils.ProgressBar(clips * steps, node_id=unique_id)
        meter = StepMeter(next(net.parameters()).device)

        def on_step(done: int, total: int, _latent) -> None:
            c.check_interrupt()
            meter.step()
            pbar.update_absolute(done, total)

        try:
            res = sample_s2v(net, pos, neg, s2v_audio, ref_image, vae, width=int(width), height=int(height),
                             steps=int(steps), cfg=float(cfg), shift=float(shift), seed=int(seed),
                             pose_video=pose_video, drop_first_motion=bool(drop_first_motion), callback=on_step)
        finally:
            c.release_memory()
        stats = meter.stats()
        return {"ui": {"wanmeter_stats": [stats], "text": [stats_text(stats)]}, "result": (res.frames, res.audio)}


NODE_CLASS_MAPPINGS = {
    "WanMeterS2VAudio": WanMeterS2VAudio,
    "WanMeterS2VSampler": WanMeterS2VSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanMeterS2VAudio": "WanMeter S2V Audio",
    "WanMeterS2VSampler": "WanMeter S2V Sampler",
}
