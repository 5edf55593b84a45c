"""Write frames (and an optional audio track) to a video file.

H.264 in an .mp4 via PyAV (yuv420p, so every player opens it; yuv420p needs even width and
height, so odd sizes are padded by repeating the last row/column). Without PyAV, an animated
WebP via Pillow, which browsers and ComfyUI's previews show as well.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WanMeterError


def to_uint8_frames(frames: Any) -> np.ndarray:
    """[F,H,W,3] float 0..1 (torch or numpy) or uint8 -> contiguous uint8 numpy [F,H,W,3]."""
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise WanMeterError(f"Expected frames shaped [frames, height, width, 3]; got {list(arr.shape)}.")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _even(arr: np.ndarray) -> np.ndarray:
    _, h, w, _ = arr.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return arr


def _audio_array(waveform: Any) -> np.ndarray:
    """ComfyUI AUDIO waveform [B,C,S] / [C,S] / [S] -> float32 [C,S] (first item of a batch)."""
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().float().cpu().numpy()
    a = np.asarray(waveform, dtype=np.float32)
    if a.ndim == 3:
        a = a[0]
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] not in (1, 2):
        raise WanMeterError(f"Expected an audio waveform shaped [channels, samples] with 1 or 2 channels; got {list(a.shape)}.")
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0))


def _write_mp4(arr: np.ndarray, path: Path, fps: float, crf: int, audio: np.ndarray | None, sample_rate: int | None) -> None:
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=rate)
        vs.width, vs.height = arr.shape[2], arr.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf)}
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=int(sample_rate))
            astream.layout = "stereo" if audio.shape[0] == 2 else "mono"
        for frame in arr:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if astream is not None:
            # trim the audio to the video's length, like a muxer with -shortest
            n = min(audio.shape[1], int(round(len(arr) / float(rate) * sample_rate)))
            chunk = 1024
            for start in range(0, n, chunk):
                piece = np.ascontiguousarray(audio[:, start:min(n, start + chunk)])
                af = av.AudioFrame.from_ndarray(piece, format="fltp", layout=astream.layout.name)
                af.sample_rate = int(sample_rate)
                af.pts = start
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)


def _write_webp(arr: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in arr]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, int(round(1000 / fps))),
                   loop=0, quality=90)


def write_video(frames: Any, path: str | Path, fps: float = 16, *, audio: Any = None, sample_rate: int | None = None,
                crf: int = 19, prefer: str = "mp4") -> Path:
    """Write frames [F,H,W,3] (0..1 floats or uint8) to `path`; returns the path actually written.

    prefer="mp4" writes H.264 with PyAV and falls back to animated WebP (suffix changed) when
    PyAV is missing; prefer="webp" always writes WebP (no audio). `audio` is a waveform
    ([C,S] or ComfyUI's [B,C,S], -1..1) at `sample_rate` Hz, muxed as AAC and cut to the video length.
    """
    if fps <= 0:
        raise WanMeterError(f"fps must be positive (got {fps}).")
    arr = _even(to_uint8_frames(frames))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = None
    if audio is not None:
        if not sample_rate:
            raise WanMeterError("An audio track needs its sample_rate (e.g. 16000).")
        wav = _audio_array(audio)
    if prefer == "mp4":
        try:
            import av  # noqa: F401
        except ImportError:
            prefer = "webp"
        else:
            path = path.with_suffix(".mp4")
            _write_mp4(arr, path, fps, crf, wav, sample_rate)
            return path
    if prefer != "webp":
        raise WanMeterError(f"Unknown video format {prefer!r}; use 'mp4' or 'webp'.")
    path = path.with_suffix(".webp")
    _write_webp(arr, path, fps)
    return path
