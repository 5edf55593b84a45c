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
        return c.input_types("WanMeterS2VAudio")

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
        return c.input_types("WanMeterS2VSampler")

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

        experts = getattr(model, "experts", None)
        net = experts[0] if experts else getattr(model, "model", model)
        if not (hasattr(net, "casual_audio_encoder") and hasattr(net, "frame_packer")):
            raise WanMeterError("model is not Wan2.2 S2V-14B. Load wan2.2_s2v_14B_*.safetensors with WanMeter Model "
                                "Loader (use WanMeter Sampler for T2V/I2V/TI2V).")
        if vae is None or getattr(vae, "family", "wan21") != "wan21":
            raise WanMeterError("S2V-14B uses the Wan2.1 VAE: load wan_2.1_vae.safetensors with WanMeter VAE Loader.")
        if experts:
            from .sampler import _plan_runtime

            _plan_runtime(model, int(width), int(height), {"frames": int(model.facts["clip_frames"]), "steps": steps,
                                                            "cfg_high": cfg, "cfg_low": cfg, "batch_size": 1,
                                                            "shift": shift, "boundary": None})
        pos = from_conditioning(positive, name="positive")[:1]
        neg = from_conditioning(negative, name="negative")[:1]
        clips = getattr(s2v_audio, "num_clips", 1)
        pbar = comfy.utils.ProgressBar(clips * steps, node_id=unique_id)
        meter = StepMeter(model.runtime.torch_device() if experts else next(net.parameters()).device)

        def on_step(done: int, total: int, _latent) -> None:
            c.check_interrupt()
            meter.step()
            pbar.update_absolute(done, total)

        try:
            res = sample_s2v(model if experts else net, pos, neg, s2v_audio, ref_image, vae, width=int(width), height=int(height),
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
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterS2VAudio", "WanMeterS2VSampler")
