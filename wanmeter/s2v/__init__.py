"""Wan2.2 S2V-14B (speech to video), which diffusers lacks.

Public API:
  load_s2v(path, weight_dtype=, compute_dtype=, device=) -> LoadedDiT (.model: WanS2VTransformer)
  load_wav2vec2(path, device=, dtype=) -> transformers Wav2Vec2Model
  encode_audio(waveform, sample_rate, wav2vec_model_or_path, clip_frames=80, fps=16, audio_scale=1.0,
               max_clips=None, max_seconds=600) -> S2VAudioCond
  sample_s2v(model, positive, negative, audio_cond, ref_image, vae, width=, height=, steps=, cfg=, shift=,
             seed=, clips=0, pose_video=None, drop_first_motion=True, callback=None) -> S2VResult
"""
from .audio import S2VAudioCond, encode_audio, load_wav2vec2
from .config import S2VConfig
from .loader import load_s2v
from .model import WanS2VTransformer
from .sampler import S2VResult, frames_for, sample_s2v

__all__ = ["S2VAudioCond", "S2VConfig", "S2VResult", "WanS2VTransformer", "encode_audio", "frames_for",
           "load_s2v", "load_wav2vec2", "sample_s2v"]
