"""`python -m wanmeter inspect FILE...`: what each checkpoint is, read from headers only.

For every file: the kind (diffusion model, LoRA, text encoder, VAE, audio encoder), the Wan2.2
variant, the storage format (bf16 / fp16 / fp8 / ComfyUI fp8_scaled / kijai fp8_e4m3fn_scaled /
ComfyUI comfy_quant fp8 / int8 / MXFP8 / NVFP4 / GGUF Q*), the size on disk, the weights' size in
VRAM per precision WanMeter can load it in, and the workflow slot it belongs to (DiT high noise /
low noise / single, text encoder, VAE, audio encoder, LoRA with its expert). Nothing is loaded:
the answers come from the same header readers the loaders use, so a file the audit accepts is a
file the loader accepts, and the messages for others are the loaders' own.
Bytes per weight come from the estimator's calibration (weight_bytes_per_param): one table.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WanMeterError

GIB = 1024 ** 3
_LORA_NEEDLES = ("lora_down", "lora_up", "lora_A.", "lora_B.", ".diff_b", "lora_unet_")


@dataclass
class Audit:
    path: str
    kind: str                     # diffusion model | LoRA | text encoder | VAE | audio encoder | unknown
    slot: str                     # workflow slot, or "none" with the reason in `problem`
    variant: str = ""
    format: str = ""
    disk_bytes: int = 0
    params: int = 0
    vram_bytes: dict[str, int] = field(default_factory=dict)   # weights in VRAM per load precision
    notes: list[str] = field(default_factory=list)
    problem: str = ""


def _cal(dtype: str) -> float | None:
    from ..estimator.calibration import load_calibration

    try:
        return float(load_calibration().v(f"weight_bytes_per_param.{dtype}"))
    except Exception:  # a dtype the estimator does not know
        return None


def _vram(params: int, dtypes: list[str]) -> dict[str, int]:
    out = {}
    for d in dtypes:
        b = _cal(d)
        if b is not None:
            out[d] = int(params * b)
    return out


def _dit(path: Path) -> Audit:
    from .dit_inspect import inspect_dit
    from .dit_loader import file_weight_dtype

    info = inspect_dit(path)
    from ..variants import variant as facts

    experts = int(facts(info.variant)["experts"])
    if experts == 2:
        slot = {"high": "DiT high noise (model)", "low": "DiT low noise (model_low_noise)"}.get(
            info.expert_hint or "", "DiT high or low noise (the name does not say which; the weights cannot tell)")
    else:
        slot = "DiT (model; model_low_noise none)"
    notes = []
    if info.layout == "gguf":
        from .gguf_loader import gguf_file_type

        fmt = f"GGUF {gguf_file_type(info.dtypes)}"
        vram = {"file (kept quantized)": info.weight_bytes}
        vram.update(_vram(info.param_count, ["bf16"]))
        notes.append("GGUF weights stay quantized and are dequantized per layer (weight_dtype picks only the compute dtype)")
    elif info.quant:
        fmts = sorted(set(info.quant.values()))
        fmt = "ComfyUI comfy_quant " + "+".join(fmts) + f" ({len(info.quant)} layers)"
        vram = {"file (kept quantized)": info.weight_bytes}
        vram.update(_vram(info.param_count, ["bf16", "fp8_e4m3fn"]))
        if any(f in ("mxfp8", "nvfp4") for f in fmts):
            notes.append("MXFP8/NVFP4 compute needs a Blackwell GPU (weight_dtype file); elsewhere load as bf16 or fp8")
    else:
        if info.scaled_fp8:
            fmt = "ComfyUI fp8_scaled" if "scaled_fp8" in info.tensors else "kijai fp8_e4m3fn_scaled (scale_weight, no marker)"
        else:
            fmt = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}.get(
                info.dtype, info.dtype)
        vram = _vram(info.param_count, sorted({"bf16", "fp8_e4m3fn", file_weight_dtype(info)}))
    if info.layout != "single_file" and info.layout != "gguf":
        fmt += f" ({info.layout.replace('_', ' ')})"
    if info.tiny:
        notes.append("tiny test model (dim < 1024)")
    return Audit(str(path), "diffusion model", slot, info.variant, fmt, info.file_bytes, info.param_count, vram, notes)


def _lora(path: Path, tensors: dict) -> Audit:
    from ..accel.lora import describe_lora_family, lora_expert_hint

    keys = list(tensors)
    family = describe_lora_family(keys)
    disk = path.stat().st_size
    if family:
        return Audit(str(path), "LoRA", "none", format="LoRA", disk_bytes=disk,
                     problem=f"{family}, not a Wan LoRA: WanMeter refuses it")
    downs = [(k, m) for k, m in tensors.items() if "lora_down" in k or "lora_A" in k]
    rank = max((m.shape[0] for _, m in downs), default=0)
    dims = {m.shape[1] for k, m in downs if ("self_attn.q" in k or "attn1.to_q" in k or "self_attn_q" in k)}
    size = {5120: "14B (A14B / S2V / Wan2.1 14B)", 3072: "5B (TI2V-5B)", 1536: "Wan2.1 1.3B (does not fit Wan2.2)"}
    model = ", ".join(size.get(d, f"dim {d}") for d in sorted(dims)) or "unknown size"
    if any(k.startswith("transformer.") for k in keys):
        layout = "diffusers/PEFT"
    elif any(k.startswith("lora_unet_") for k in keys):
        layout = "musubi (lora_unet_)"
    elif any(".lora_A." in k for k in keys):
        layout = "lightx2v (lora_A/lora_B)"
    else:
        layout = "ComfyUI/kijai (lora_down/lora_up)"
    hint = lora_expert_hint(path)
    slot = f"LoRA ({'apply_to ' + hint + '_noise' if hint else 'apply_to both / the expert it was trained for'})"
    params = sum(m.numel for m in tensors.values())
    notes = [f"rank {rank}", f"for Wan {model}"] + ([f"{sum('.diff' in k for k in keys)} full .diff/.diff_b tensors"]
                                                    if any(".diff" in k for k in keys) else [])
    return Audit(str(path), "LoRA", slot, format=f"LoRA, {layout}", disk_bytes=disk, params=params,
                 vram_bytes={"merged": 0, "attached (run time)": int(params * 2)}, notes=notes)


def audit_file(path: str | os.PathLike) -> Audit:
    """Header-only identification of one file; never raises for a bad file (the problem is reported)."""
    p = Path(path).expanduser()
    if not p.exists():
        return Audit(str(p), "unknown", "none", problem="does not exist")
    if p.is_dir() or p.suffix.lower() == ".gguf":
        try:
            return _dit(p)
        except WanMeterError as e:
            return Audit(str(p), "unknown", "none", disk_bytes=_size(p), problem=str(e))
    if not p.is_file():
        return Audit(str(p), "unknown", "none", problem="not a regular file (a FIFO/device?): WanMeter does not open it")
    from .safetensors_io import read_header

    try:
        hdr = read_header(p)
    except WanMeterError as e:
        return Audit(str(p), "unknown", "none", disk_bytes=_size(p), problem=str(e))
    keys = list(hdr.tensors)
    if any(n in k for k in keys for n in _LORA_NEEDLES):
        return _lora(p, hdr.tensors)
    attempts: list[str] = []
    try:
        return _dit(p)
    except WanMeterError as e:
        attempts.append(str(e))
    try:
        from .text_encoder import inspect_text_encoder

        _, cfg = inspect_text_encoder(p)
        params = sum(m.numel for k, m in hdr.tensors.items() if k != "spiece_model" and not k.endswith("scale_weight"))
        fmt = "fp8_scaled" if any(k.endswith("scale_weight") for k in keys) else _dominant(
            {k: m for k, m in hdr.tensors.items() if not k.endswith("spiece_model")})
        return Audit(str(p), "text encoder", "text encoder (umt5-xxl, all variants)",
                     format=fmt, disk_bytes=hdr.file_bytes, params=params,
                     vram_bytes={"bf16": params * 2, "fp8_e4m3fn": params}, notes=[f"{cfg['num_layers']} layers, d_model {cfg['d_model']}"])
    except WanMeterError:
        pass
    try:
        from .vae_loader import inspect_vae

        lay = inspect_vae(p)
        params = sum(m.numel for m in hdr.tensors.values())
        use = "TI2V-5B" if lay.family == "wan22" else "T2V-A14B, I2V-A14B, S2V-14B"
        return Audit(str(p), "VAE", f"VAE ({lay.family}: {use})", format=_dominant(hdr.tensors),
                     disk_bytes=hdr.file_bytes, params=params, vram_bytes={"bf16": params * 2, "fp32": params * 4},
                     notes=[f"{lay.layout} key names"])
    except WanMeterError:
        pass
    if any("feature_projection" in k or "wav2vec2." in k for k in keys):
        params = sum(m.numel for m in hdr.tensors.values())
        return Audit(str(p), "audio encoder", "audio encoder (S2V-14B: wav2vec2-large)", format=_dominant(hdr.tensors),
                     disk_bytes=hdr.file_bytes, params=params, vram_bytes={"fp16": params * 2, "fp32": params * 4})
    return Audit(str(p), "unknown", "none", disk_bytes=hdr.file_bytes, problem=attempts[0] if attempts else "unknown")


def _size(p: Path) -> int:
    try:
        return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    except OSError:
        return 0


def _dominant(tensors: dict) -> str:
    count: dict[str, int] = {}
    for m in tensors.values():
        count[m.dtype] = count.get(m.dtype, 0) + m.numel
    d = max(count, key=count.get) if count else ""
    return {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn"}.get(d, d)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _gib(b: int) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 1024 ** 2:.1f} MiB"


def format_audit(a: Audit) -> str:
    lines = [f"{a.path}"]
    if a.problem:
        lines.append(f"  {a.kind}: {a.problem}")
        return "\n".join(lines)
    lines.append(f"  kind     {a.kind}" + (f" - {a.variant}" if a.variant else ""))
    lines.append(f"  format   {a.format}")
    lines.append(f"  slot     {a.slot}")
    lines.append(f"  on disk  {_gib(a.disk_bytes)}" + (f", {_count(a.params)} parameters" if a.params else ""))
    if a.vram_bytes:
        lines.append("  VRAM     " + ", ".join(f"{k} {_gib(v)}" for k, v in a.vram_bytes.items()) + " (weights only)")
    for n in a.notes:
        lines.append(f"  note     {n}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    audits = [audit_file(f) for f in args.files]
    if args.json:
        print(json.dumps([asdict(a) for a in audits], indent=1))
    else:
        print("\n\n".join(format_audit(a) for a in audits))
    return 1 if any(a.problem for a in audits) else 0


def add_subcommands(sub: Any) -> None:
    p = sub.add_parser("inspect", help="what each checkpoint is: variant, format, size on disk / in VRAM, workflow slot",
                       description="Read only the headers of Wan2.2 checkpoint files (DiT, LoRA, umt5, VAE, wav2vec2; "
                       ".safetensors, .gguf or model folders) and say what each is and where it goes.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
