"""Audio -> per-clip wav2vec2 features for S2V, as the official speech2video pipeline computes them.

Steps (official wan/speech2video.py + wan/modules/s2v/audio_encoder.py): mono, 16 kHz,
zero-mean/unit-variance, wav2vec2-large-xlsr-53-english with all hidden states (embeddings + 24
layers) at 50 Hz, linear interpolation (align_corners) to 30 fps, then video frame k of every
clip takes the 30-fps frame round_half_even(k / fps * 30); frames past the end are zeros. The
number of clips covers the whole audio: int(n30 / (clip_frames * 30 / fps)) + 1.

The wav2vec2 is transformers' Wav2Vec2Model built from a local config derived from the file's
tensor shapes (ComfyUI's wav2vec2_large_english_fp16.safetensors or an HF-named state dict);
nothing is fetched from a hub.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WanMeterError
from .resample import resample

WAV2VEC_SR = 16000
FEATURE_FPS = 30      # wav2vec2 features are interpolated to this rate before bucketing
WAV2VEC_HZ = 50       # wav2vec2 frame rate (320-sample hop at 16 kHz)
MIN_SAMPLES = 400     # one wav2vec2 frame (conv receptive field)
DEFAULT_MAX_SECONDS = 600.0
TINY_HIDDEN_LIMIT = 256  # hidden sizes below this are tiny test models


@dataclass
class S2VAudioCond:
    """Encoded audio for S2V: features per video frame for every clip, plus the audio itself.

    features: [1, num_layers, hidden, num_clips * clip_frames] float32 on CPU (zeros past the end).
    waveform / sample_rate: the input audio, so the saved video keeps its sound.
    """

    features: torch.Tensor
    num_clips: int
    clip_frames: int
    fps: int
    waveform: torch.Tensor
    sample_rate: int
    duration_s: float
    audio_scale: float = 1.0
    meta: dict = field(default_factory=dict)

    def clip(self, r: int) -> torch.Tensor:
        """Features of clip r: [1, num_layers, hidden, clip_frames]."""
        return self.features[..., r * self.clip_frames:(r + 1) * self.clip_frames]

    @property
    def num_layers(self) -> int:
        return int(self.features.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.features.shape[2])


# --- wav2vec2 ---------------------------------------------------------------------------------

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


def _normalize_w2v_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI / HF (Wav2Vec2ForCTC) names -> transformers Wav2Vec2Model names."""
    out = {}
    for k, v in sd.items():
        if k.startswith("wav2vec2."):
            k = k[len("wav2vec2."):]
        if k.startswith(("lm_head.", "quantizer.", "project_q.", "project_hid.")):
            continue
        k = k.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        k = k.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[k] = v
    return out


def wav2vec2_config_from_shapes(shapes: dict[str, tuple[int, ...]], name: str = "the audio encoder file"):
    """transformers Wav2Vec2Config for a wav2vec2-large-style (stable layer norm) state dict."""
    try:
        return _w2v_config(shapes, name)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise WanMeterError(f"{name} has wav2vec2 key names but tensor shapes wav2vec2-large does not have "
                            f"({type(e).__name__}: {e}). Use wav2vec2_large_english_fp16.safetensors.") from None


def _w2v_config(shapes: dict[str, tuple[int, ...]], name: str):
    from transformers import Wav2Vec2Config

    if any(k.startswith(("model.encoder.embed_positions", "encoder.embed_positions")) for k in shapes):
        raise WanMeterError(f"{name} is a Whisper audio encoder; S2V needs wav2vec2: use "
                            "wav2vec2_large_english_fp16.safetensors in models/audio_encoders.")
    if "encoder.layer_norm.weight" not in shapes or "feature_projection.projection.weight" not in shapes:
        raise WanMeterError(f"{name} is not a wav2vec2 model. Use wav2vec2_large_english_fp16.safetensors "
                            "(wav2vec2-large-xlsr-53-english) in models/audio_encoders.")
    hidden = shapes["encoder.layer_norm.weight"][0]
    layers = len({int(m.group(1)) for k in shapes if (m := _LAYER.match(k))})
    if hidden >= TINY_HIDDEN_LIMIT and (hidden != 1024 or layers != 24):
        raise WanMeterError(
            f"{name} is a wav2vec2 with hidden size {hidden} and {layers} layers; S2V-14B was trained on "
            "wav2vec2-large-xlsr-53-english (1024, 24 layers). Use wav2vec2_large_english_fp16.safetensors.")
    if "feature_extractor.conv_layers.1.layer_norm.weight" not in shapes:
        raise WanMeterError(f"{name} is a wav2vec2-base style model (group-norm feature extractor); S2V needs "
                            "wav2vec2_large_english_fp16.safetensors.")
    conv = shapes["feature_extractor.conv_layers.0.conv.weight"][0]
    pos = shapes.get("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    if pos is None:
        raise WanMeterError(f"{name} lacks the positional convolution weights; the file is incomplete. Download it again.")
    return Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        intermediate_size=shapes["encoder.layers.0.feed_forward.intermediate_dense.weight"][0],
        conv_dim=(conv,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=pos[2], num_conv_pos_embedding_groups=hidden // pos[1],
        layer_norm_eps=1e-5, hidden_act="gelu", feat_extract_activation="gelu",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, vocab_size=32)


def load_wav2vec2(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """transformers Wav2Vec2Model from a local safetensors file, strictly (only the training-only
    masked_spec_embed may be absent)."""
    from safetensors.torch import load_file
    from transformers import Wav2Vec2Model

    from ..loader.safetensors_io import check_finite, read_header

    p = os.fspath(path)
    name = os.path.basename(p)
    hdr = read_header(p)
    shapes = {k: v.shape for k, v in hdr.tensors.items()}
    shapes = {k: tuple(s) for k, s in _normalize_w2v_keys({k: s for k, s in shapes.items()}).items()}
    cfg = wav2vec2_config_from_shapes(shapes, name)
    sd = _normalize_w2v_keys(load_file(p))
    for k, v in sd.items():
        check_finite(v, k, p)
    model = Wav2Vec2Model(cfg)
    expected = set(model.state_dict())
    missing = sorted(expected - set(sd) - {"masked_spec_embed"})
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise WanMeterError(f"{name} does not match wav2vec2-large: missing {missing[:3]}, unexpected {unexpected[:3]}. "
                            "Use wav2vec2_large_english_fp16.safetensors (download it again if it is damaged).")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(model.state_dict()[k].shape):
            raise WanMeterError(f"{name}: tensor {k} has shape {list(v.shape)}; the file is damaged. Download it again.")
    model.load_state_dict(sd, strict=False)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --- audio preparation ------------------------------------------------------------------------

MAX_CHANNELS = 8  # more "channels" than this, with few samples each, is a transposed waveform


def check_audio(waveform: torch.Tensor, sample_rate: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> torch.Tensor:
    """Validate and return the audio as [C, N] float32 in -1..1. Cheap: call it before loading any model.

    ComfyUI's AUDIO is [B, C, N] float in -1..1. Integer PCM (any integer dtype, e.g. int16 from a
    raw decoder) is scaled to -1..1 by its dtype's range; a channels-last waveform ([B, N, C] or
    [N, C], as soundfile returns) is detected and transposed; a layout that is neither is refused
    naming the expected one."""
    if not isinstance(waveform, torch.Tensor):
        raise WanMeterError("the audio input is not a tensor; connect a LoadAudio node to the S2V audio node.")
    w = waveform
    if w.ndim == 3:
        if w.shape[0] != 1:
            raise WanMeterError(f"the audio has a batch of {w.shape[0]} clips; S2V takes one. Use a single audio file.")
        w = w[0]
    elif w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[-1] == 0 or w.shape[0] == 0:
        raise WanMeterError(f"the audio has shape {list(waveform.shape)}; expected [channels, samples] with samples > 0. "
                            "Load a non-empty audio file.")
    if w.shape[0] > MAX_CHANNELS:
        if w.shape[1] <= MAX_CHANNELS:
            w = w.t()  # channels-last [N, C] -> [C, N]
        else:
            raise WanMeterError(f"the audio has shape {list(waveform.shape)}: neither [batch, channels, samples] nor "
                                f"[batch, samples, channels] with at most {MAX_CHANNELS} channels. Connect a LoadAudio "
                                "node (AUDIO is [1, channels, samples]).")
    if int(sample_rate) <= 0:
        raise WanMeterError(f"the audio sample rate {sample_rate} is invalid. Re-export the audio file.")
    dur = w.shape[-1] / float(sample_rate)
    if dur > max_seconds:
        raise WanMeterError(f"the audio is {dur:.0f} s long, over the {max_seconds:.0f} s limit "
                            f"(~{math.ceil(dur * 16 / 80)} clips of 5 s). Cut it or raise max_seconds.")
    if w.dtype == torch.bool or w.is_complex():
        raise WanMeterError(f"the audio samples are {w.dtype}; expected float in -1..1 or integer PCM. Re-export the audio.")
    if w.is_floating_point():
        w = w.float()
    else:  # integer PCM: full scale of the dtype -> -1..1 (unsigned PCM is offset by half its range)
        info = torch.iinfo(w.dtype)
        half = (float(info.max) + 1.0) / 2.0 if info.min == 0 else -float(info.min)
        w = (w.double() - (half if info.min == 0 else 0.0)) / half
        w = w.float()
    if not torch.isfinite(w).all():
        raise WanMeterError("the audio contains NaN/inf samples. Re-export the audio file.")
    return w.contiguous()


def to_wav2vec_input(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[C, N] at any rate -> [1, N16] mono, 16 kHz, zero-mean / unit-variance (Wav2Vec2 feature extractor)."""
    mono = waveform.mean(dim=0, keepdim=True)
    x = resample(mono, int(sample_rate), WAV2VEC_SR)
    if x.shape[-1] < MIN_SAMPLES:
        x = F.pad(x, (0, MIN_SAMPLES - x.shape[-1]))
    x = x.double()
    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    return x.float()


@torch.no_grad()
def wav2vec_hidden_states(model, x16: torch.Tensor) -> torch.Tensor:
    """[1, N] -> all hidden states [L+1, T50, hidden] (float32, on CPU)."""
    dev = next(model.parameters()).device
    dt = next(model.parameters()).dtype
    out = model(x16.to(dev, dt), output_hidden_states=True)
    return torch.cat([h.float() for h in out.hidden_states]).cpu()


def interpolate_to_fps(feats: torch.Tensor, src_fps: float = WAV2VEC_HZ, dst_fps: float = FEATURE_FPS) -> torch.Tensor:
    """[L, T, C] -> [L, int(T / src * dst), C], linear with align_corners (official)."""
    n = max(1, int(feats.shape[1] / float(src_fps) * dst_fps))
    return F.interpolate(feats.transpose(1, 2), size=n, mode="linear", align_corners=True).transpose(1, 2)


def num_clips_for(n30: int, clip_frames: int = 80, fps: int = 16) -> int:
    return int(n30 / (clip_frames * FEATURE_FPS / fps)) + 1


def bucket_per_frame(feats30: torch.Tensor, num_clips: int, clip_frames: int = 80, fps: int = 16) -> torch.Tensor:
    """[L, n30, C] -> [1, L, C, num_clips * clip_frames]: frame k takes round_half_even(k / fps * 30)."""
    n30 = feats30.shape[1]
    n = num_clips * clip_frames
    total = n30 + max(0, math.ceil(n / fps * FEATURE_FPS) - n30)
    idx = np.round(np.linspace(0.0, n / fps, n, endpoint=False) * FEATURE_FPS).astype(np.int64)
    idx = np.clip(idx, 0, total - 1)
    out = torch.zeros(feats30.shape[0], n, feats30.shape[2], dtype=torch.float32)
    valid = torch.from_numpy(idx < n30)
    out[:, valid] = feats30[:, torch.from_numpy(idx[idx < n30])].float()
    return out.permute(0, 2, 1).unsqueeze(0)


def encode_audio(waveform: torch.Tensor, sample_rate: int, wav2vec_model, *, clip_frames: int = 80, fps: int = 16,
                 audio_scale: float = 1.0, max_clips: int | None = None,
                 max_seconds: float = DEFAULT_MAX_SECONDS) -> S2VAudioCond:
    """Encode audio ([B=1, C, N] or [C, N]) for S2V. `max_clips` None/0 = as many as the audio needs.

    `wav2vec_model` is a transformers Wav2Vec2Model (load_wav2vec2) or a path to the file; a
    path is loaded only after the audio has been validated.
    """
    if clip_frames <= 0 or clip_frames % 4:
        raise WanMeterError(f"clip_frames={clip_frames} must be a positive multiple of 4 (official: 80).")
    w = check_audio(waveform, sample_rate, max_seconds)
    if isinstance(wav2vec_model, (str, os.PathLike)):
        wav2vec_model = load_wav2vec2(wav2vec_model)
    x16 = to_wav2vec_input(w, sample_rate)
    states = wav2vec_hidden_states(wav2vec_model, x16)
    feats30 = interpolate_to_fps(states)
    clips = num_clips_for(feats30.shape[1], clip_frames, fps)
    if max_clips:
        clips = max(1, min(clips, int(max_clips)))
    feats = bucket_per_frame(feats30, clips, clip_frames, fps)
    if audio_scale != 1.0:
        feats = feats * float(audio_scale)
    wave = w[None] if w.ndim == 2 else w
    return S2VAudioCond(features=feats, num_clips=clips, clip_frames=clip_frames, fps=fps, waveform=wave.cpu(),
                        sample_rate=int(sample_rate), duration_s=w.shape[-1] / float(sample_rate),
                        audio_scale=float(audio_scale), meta={"n30": int(feats30.shape[1])})
