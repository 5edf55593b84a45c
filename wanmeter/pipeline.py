"""Text (+ image) -> latent -> frames: the engine's end-to-end chain, without ComfyUI.

Two entry points:
- `WanPipeline`: models already loaded (the e2e tests, long-lived processes).
- `generate_from_files`: loads stage by stage and frees each model before the next one
  (text encoder, then the DiT expert(s), then the VAE), which is what a single GPU needs.
Both time each stage and record its peak memory.
"""
from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .errors import WanMeterError
from .runtime.options import RuntimeOptions
from .sampler import SampleRequest, SampleStats, WanModelBundle, sample
from .sampler.stats import process_rss_bytes
from .variants import variant


@dataclass
class StageReport:
    name: str
    seconds: float
    peak_bytes: int
    memory_kind: str  # "cuda_max_allocated" or "process_rss"


@dataclass
class GenerationResult:
    """frames: [B, F, H, W, 3] float 0..1 on the CPU; latent: raw VAE latent; fps: the variant's."""

    frames: torch.Tensor
    latent: torch.Tensor
    fps: int
    stages: list[StageReport] = field(default_factory=list)
    sample_stats: SampleStats | None = None

    @property
    def peak_bytes(self) -> int:
        return max((s.peak_bytes for s in self.stages), default=0)

    def report(self) -> str:
        """Stage table: time and peak memory (VRAM on CUDA, process RSS on CPU) per stage."""
        kinds = {s.memory_kind for s in self.stages}
        label = "peak VRAM" if kinds == {"cuda_max_allocated"} else "peak RAM" if kinds == {"process_rss"} else "peak mem"
        rows = [f"  {'stage':<11} {'time':>9}  {label:>9}"]
        for s in self.stages:
            row = f"  {s.name:<11} {s.seconds:7.2f} s  {s.peak_bytes / 2**30:5.2f} GiB"
            if s.name == "sample" and self.sample_stats is not None and self.sample_stats.step_seconds:
                st = self.sample_stats
                row += f"  ({st.seconds_per_step:.3f} s/step" + (f", {st.swaps} expert swap" if st.swaps else "") + ")"
            rows.append(row)
        return "\n".join(rows)


@contextmanager
def stage(name: str, device: torch.device, reports: list[StageReport]) -> Iterator[None]:
    """Time a stage and record its peak memory (CUDA allocator peak, or process RSS on CPU)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = process_rss_bytes()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
        else:
            peak, kind = max(rss0, process_rss_bytes()), "process_rss"
        reports.append(StageReport(name, time.perf_counter() - t0, peak, kind))


def _resize_center(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[H,W,C] 0..1 -> [height,width,C]: scale to cover, then center-crop (keeps the aspect ratio)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[0, :, top:top + height, left:left + width].permute(1, 2, 0)


def encode_image_condition(vae: Any, image: torch.Tensor, variant_name: str, width: int, height: int,
                           frames: int) -> torch.Tensor:
    """Raw image latent for SampleRequest.image_latent.

    image: [H,W,C] or [1,H,W,C] in 0..1 (resized to cover width x height and center-cropped).
    I2V-A14B: the image followed by frames-1 mid-gray frames (0 in the VAE's -1..1 range),
    encoded as one video, as the official image2video.py and diffusers do. TI2V-5B: the image alone.
    """
    if image.ndim == 4:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise WanMeterError(f"Expected an image shaped [height, width, 3]; got {list(image.shape)}.")
    img = _resize_center(image[..., :3].float().cpu(), width, height)
    if variant_name == "i2v_a14b":
        gray = torch.full((frames - 1, height, width, 3), 0.5)
        return vae.encode(torch.cat([img[None], gray], dim=0))
    if variant_name == "ti2v_5b":
        return vae.encode(img[None])
    raise WanMeterError(f"{variant(variant_name)['label']} takes no start image; use i2v_a14b or ti2v_5b.")


class WanPipeline:
    """Loaded text encoder + DiT bundle + VAE -> frames."""

    def __init__(self, bundle: WanModelBundle, text_encoder: Any, vae: Any):
        self.bundle, self.text_encoder, self.vae = bundle, text_encoder, vae

    def encode_text(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.text_encoder.encode([prompt, negative_prompt])
        return emb[:1], emb[1:]

    def __call__(self, prompt: str, req: SampleRequest, *, negative_prompt: str = "", image: torch.Tensor | None = None,
                 callback: Callable | None = None, tiled_decode: bool = False) -> GenerationResult:
        device = self.bundle.placement.device
        reports: list[StageReport] = []
        with stage("text", device, reports):
            pos, neg = self.encode_text(prompt, negative_prompt)
        if image is not None:
            with stage("image", device, reports):
                req.image_latent = encode_image_condition(self.vae, image, self.bundle.variant, req.width, req.height,
                                                          req.frames)
        stats = SampleStats()
        with stage("sample", device, reports):
            latent = sample(self.bundle, pos, neg, req, callback, stats=stats)
        with stage("decode", device, reports):
            frames = decode_batch(self.vae, latent, tiled_decode)
        return GenerationResult(frames, latent, int(self.bundle.facts["fps"]), reports, stats)


def decode_batch(vae: Any, latent: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """raw latent [B,C,T,h,w] -> frames [B,F,H,W,3] (one video at a time: the VAE's peak is per video)."""
    videos = [vae.decode(latent[i:i + 1], tiled=tiled) for i in range(latent.shape[0])]
    return torch.stack(videos)


def _vae_to(v: Any, device: torch.device) -> None:
    """Move a WanVAE between CPU memory and the device (it waits on the CPU while the DiT samples)."""
    v.model.to(device)
    v.device = device


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def generate_from_files(*, dit: Sequence[str | Path], text_encoder: str | Path, vae: str | Path, prompt: str,
                        req: SampleRequest, negative_prompt: str = "", image: torch.Tensor | None = None,
                        variant_name: str | None = None, runtime: RuntimeOptions | None = None,
                        weight_dtype: str = "bf16", text_encoder_device: str = "cpu",
                        vae_dtype: torch.dtype = torch.float32, tiled_decode: bool = False,
                        callback: Callable | None = None) -> GenerationResult:
    """Load, run and free each stage in turn. dit: one file (TI2V-5B) or high- and low-noise files (A14B)."""
    from .loader import load_dit
    from .loader.text_encoder import load_text_encoder
    from .loader.vae_loader import load_vae

    from .loader.parts import check_parts
    from .sampler.request import check_request

    runtime = runtime or RuntimeOptions()
    runtime.validate()
    device = runtime.torch_device()
    # Before loading anything: the parts belong together (headers only) and the request fits the variant.
    check_request(check_parts(list(dit), vae=vae, text_encoder=text_encoder, variant=variant_name), req)
    reports: list[StageReport] = []
    te_dev = torch.device(device if text_encoder_device == "auto" else text_encoder_device)

    with stage("load text", te_dev, reports):
        te = load_text_encoder(text_encoder, device=te_dev,
                               dtype=torch.bfloat16 if te_dev.type == "cuda" else torch.float32)
    with stage("text", te_dev, reports):
        emb = te.encode([prompt, negative_prompt])
        pos, neg = emb[:1].cpu(), emb[1:].cpu()
    del te, emb
    _free(te_dev)

    with stage("load vae", device, reports):
        v = load_vae(vae, dtype=vae_dtype, device="cpu")
    with stage("load dit", device, reports):
        # model/blocks offload: experts are loaded to CPU memory and placed by the runtime
        load_dev = device if runtime.offload == "none" else torch.device("cpu")
        loaded = [load_dit(p, weight_dtype=weight_dtype, device=load_dev) for p in dit]
        name = variant_name or loaded[0].variant
        if variant(name)["experts"] == 2 and len(loaded) != 2:
            raise WanMeterError(f"{variant(name)['label']} needs two DiT files: --dit HIGH_NOISE LOW_NOISE.")
        if variant(name)["experts"] == 1 and len(loaded) != 1:
            raise WanMeterError(f"{variant(name)['label']} has one DiT: pass a single --dit file.")
        bundle = WanModelBundle.from_loaded(name, *loaded, vae=v, runtime=runtime)
        del loaded
        bundle.placement  # apply precision / attention / offload now, inside the load stage
    if image is not None:
        with stage("image", device, reports):
            _vae_to(v, device)
            req.image_latent = encode_image_condition(v, image, bundle.variant, req.width, req.height, req.frames)
            _vae_to(v, torch.device("cpu"))
    stats = SampleStats()
    with stage("sample", device, reports):
        latent = sample(bundle, pos, neg, req, callback, stats=stats)
    fps = int(bundle.facts["fps"])
    bundle.placement.teardown()
    del bundle
    _free(device)
    with stage("decode", device, reports):
        _vae_to(v, device)
        frames = decode_batch(v, latent, tiled_decode)
    del v
    _free(device)
    return GenerationResult(frames, latent, fps, reports, stats)
