"""What is this diffusion-model file? Answered from headers and configs only.

The estimator and the nodes must know the variant, the dims and the on-disk precision of a
14B checkpoint without reading 14-28 GB, and users pick files by name, which is unreliable.
So everything here comes from the safetensors header (tensor names, shapes, dtypes) or from a
folder's config.json, and the variant is decided by shapes: in_channels 16 -> T2V (S2V when the
audio modules exist), 36 -> I2V, 48/48 -> TI2V-5B.

Accepted inputs: one .safetensors file (ComfyUI repackaged fp16/bf16/fp8/fp8_scaled, official key
names, optional `model.diffusion_model.` prefix); an official Wan2.2 model folder (config.json
plus sharded safetensors with official keys); a diffusers transformer folder (config.json plus
diffusion_pytorch_model*.safetensors with diffusers key names). GGUF goes to `inspect_gguf`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import variants as _variants
from ..errors import WanMeterError
from . import comfy_quant, dit_keys
from .fp8_scaled import MARKER, is_scaled_fp8
from .safetensors_io import TensorMeta, check_regular_file, read_header, strip_prefix

TINY_DIM_LIMIT = 1024  # dims below this are tiny test models, not releases
_AUX_SUFFIXES = (".scale_weight", ".scale_input") + comfy_quant.AUX_SUFFIXES


@dataclass(frozen=True)
class DiTInfo:
    """Everything the loader, estimator and nodes need to know before loading a DiT.

    `config` is a `diffusers.WanTransformer3DModel` config (for S2V: the base transformer's, the
    audio modules are extra). `tensors` maps official (un-prefixed) key names to their header
    entries and `sources` to (file, key in that file): the loader reads exactly those.
    """

    path: Path
    variant: str                       # t2v_a14b | i2v_a14b | ti2v_5b | s2v_14b
    config: dict[str, Any]
    layout: str                        # "single_file" | "official_folder" | "diffusers_folder" | "gguf"
    dtype: str                         # dominant on-disk dtype of the weights (safetensors names: BF16, F16, F8_E4M3, ...)
    dtypes: dict[str, int]             # parameter count per on-disk dtype
    scaled_fp8: bool                   # ComfyUI fp8_scaled (weight * scale_weight)
    param_count: int                   # model parameters (scales and markers excluded)
    file_bytes: int                    # bytes on disk, all shards
    files: tuple[Path, ...]
    key_prefix: str = ""               # e.g. "model.diffusion_model." (single files only)
    tiny: bool = False                 # a tiny test model (dim < 1024)
    expert_hint: str | None = None     # "high" / "low" from the path name; a hint only, never used for detection
    keys_format: str = "official"      # "official" or "diffusers" key names inside the files
    quant: dict[str, str] = field(default_factory=dict)  # ComfyUI comfy_quant layers: {official layer: format}
    tensors: dict[str, TensorMeta] = field(default_factory=dict, repr=False, compare=False)
    sources: dict[str, tuple[Path, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.config["num_attention_heads"] * self.config["attention_head_dim"])

    @property
    def num_layers(self) -> int:
        return int(self.config["num_layers"])

    @property
    def has_audio(self) -> bool:
        return self.variant == "s2v_14b"

    @property
    def weight_bytes(self) -> int:
        """Bytes of tensor data (file size minus headers)."""
        return sum(m.offsets[1] - m.offsets[0] for m in self.tensors.values())


# --- entry point ---------------------------------------------------------------------------

def inspect_dit(path: str | os.PathLike) -> DiTInfo:
    """Identify a Wan2.2 diffusion model from headers/configs only (no tensor data is read).

    Raises WanMeterError, naming the fix, for anything that is not a Wan2.2 DiT.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise WanMeterError(f"{p} does not exist. Check the path / put the file in models/diffusion_models.")
    if p.is_dir():
        return _inspect_folder(p)
    check_regular_file(p, "model file")  # before any open(): a FIFO would block forever
    if p.suffix.lower() == ".gguf" or _magic(p) == b"GGUF":
        return inspect_gguf(p)
    if p.suffix.lower() in (".pth", ".pt", ".ckpt", ".bin"):
        raise WanMeterError(
            f"{p.name} is a pickle checkpoint ({p.suffix}); WanMeter loads only .safetensors and .gguf "
            "(pickles can run code). Use the .safetensors release of the model.")
    hdr = read_header(p)
    prefix = strip_prefix(hdr.tensors)
    tensors = {k[len(prefix):]: v for k, v in hdr.tensors.items()}
    sources = {k[len(prefix):]: (p, k) for k in hdr.tensors}
    quant: dict[str, str] = {}
    if comfy_quant.is_comfy_quant(tensors, hdr.metadata):
        quant = comfy_quant.quant_layers(tensors, hdr.metadata, name=p.name)
        for group, fmt in quant.items():  # the weight as the model sees it (NVFP4 packs 2 values per byte)
            m = tensors[f"{group}.weight"]
            tensors[f"{group}.weight"] = TensorMeta(comfy_quant.FORMATS[fmt].label,
                                                    comfy_quant.logical_shape(fmt, m.shape), m.offsets)
    return _build_info(p, tensors, sources, layout="single_file", file_bytes=hdr.file_bytes,
                       files=(p,), prefix=prefix, quant=quant)


def inspect_gguf(path: str | os.PathLike) -> DiTInfo:
    """Identify a GGUF-quantized DiT (city96-style Wan2.2 GGUF: official key names, Q*_K/Q8_0 block
    linears, F16/F32 rest) from its metadata, like inspect_dit does for safetensors.

    GGUF stores at most 4 dims in reverse order; 5-D tensors (patch_embedding) carry their real
    shape in the `comfy.gguf.orig_shape.<name>` field, as city96's converter writes it.
    Loading GGUF weights is not supported yet (load_dit says so); inspection feeds the estimator.
    """
    p = Path(path)
    check_regular_file(p, "GGUF file")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(p), "r")
    except Exception as e:  # gguf raises ValueError/struct errors/etc. for bad files
        raise WanMeterError(f"{p.name} is not a readable GGUF file ({type(e).__name__}: {e}). "
                            "It is truncated or corrupt: download it again.") from None
    orig: dict[str, tuple[int, ...]] = {}
    for name, fld in reader.fields.items():
        if name.startswith("comfy.gguf.orig_shape."):
            orig[name[len("comfy.gguf.orig_shape."):]] = tuple(int(x) for x in fld.contents())
    tensors: dict[str, TensorMeta] = {}
    for t in reader.tensors:
        shape = orig.get(t.name) or tuple(int(x) for x in reversed(t.shape.tolist()))
        tensors[t.name] = TensorMeta(t.tensor_type.name, shape, (int(t.data_offset), int(t.data_offset) + int(t.n_bytes)))
    prefix = strip_prefix(tensors)
    stripped = {k[len(prefix):]: v for k, v in tensors.items()}
    sources = {k[len(prefix):]: (p, k) for k in tensors}
    return _build_info(p, stripped, sources, layout="gguf", file_bytes=p.stat().st_size, files=(p,), prefix=prefix)


# --- folders -------------------------------------------------------------------------------

def find_expert_folders(folder: str | os.PathLike) -> tuple[Path, Path] | None:
    """(high, low) sub-folders of an A14B release: official high_noise_model/low_noise_model, or
    a diffusers pipeline's transformer (high noise, used for t >= boundary) / transformer_2 (low)."""
    f = Path(folder)
    for high, low in (("high_noise_model", "low_noise_model"), ("transformer", "transformer_2")):
        if (f / high).is_dir() and (f / low).is_dir():
            return f / high, f / low
    return None


def _inspect_folder(folder: Path) -> DiTInfo:
    pair = find_expert_folders(folder)
    if pair is not None:
        raise WanMeterError(
            f"{folder.name} holds two experts ({pair[0].name}/ and {pair[1].name}/). Pass one of them, or "
            "load both with wanmeter.loader.load_expert_pair(folder).")
    if not (folder / "config.json").is_file() and (folder / "transformer").is_dir():
        folder = folder / "transformer"   # a diffusers pipeline folder of a one-expert model
    shards = sorted(folder.glob("*.safetensors"))
    preferred = [s for s in shards if s.name.startswith("diffusion_pytorch_model")]
    shards = preferred or shards
    if not shards:
        if any(folder.glob("*.gguf")):
            raise WanMeterError(f"{folder} holds GGUF files: pass the .gguf file itself, not the folder.")
        if any(folder.glob("*.pth")) or any(folder.glob("*.bin")):
            raise WanMeterError(
                f"{folder} holds only pickle weights (.pth/.bin). WanMeter loads .safetensors: "
                "download the safetensors release of the model.")
        raise WanMeterError(f"{folder} has no .safetensors files. Point at the model folder that holds "
                            "config.json and diffusion_pytorch_model*.safetensors, or at a single .safetensors file.")
    cfg: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise WanMeterError(f"{folder / 'config.json'} is not valid JSON ({e}). Download it again.") from None
    tensors: dict[str, TensorMeta] = {}
    sources: dict[str, tuple[Path, str]] = {}
    total = 0
    for s in shards:
        hdr = read_header(s)
        total += hdr.file_bytes
        for k, v in hdr.tensors.items():
            if k in tensors:
                raise WanMeterError(f"tensor {k!r} appears in two shards of {folder} ({sources[k][0].name}, {s.name}). "
                                    "The folder mixes two models: keep one set of shards.")
            tensors[k] = v
            sources[k] = (s, k)
    index = sorted(i for i in folder.glob("*.safetensors.index.json") if i.is_file())
    if index:
        try:
            wanted = set(json.loads(index[0].read_text(encoding="utf-8")).get("weight_map", {}))
        except (OSError, json.JSONDecodeError):
            wanted = set()
        missing = sorted(wanted - set(tensors))
        if missing:
            raise WanMeterError(f"{folder} is incomplete: {len(missing)} tensors listed in {index[0].name} are in no shard "
                                f"(e.g. {missing[0]!r}). Download the missing shards.")
    keys_format = "diffusers" if dit_keys.is_diffusers_layout(tensors) or cfg.get("_class_name") == "WanTransformer3DModel" else "official"
    layout = "diffusers_folder" if keys_format == "diffusers" else "official_folder"
    if keys_format == "diffusers":
        foreign = dit_keys.describe_foreign(tensors) or dit_keys.describe_unsupported_wan(tensors)
        if foreign:
            raise WanMeterError(f"{folder.name} is {foreign}.")
        n_layers = len(dit_keys.block_indices(tensors))
        try:
            mapping = dit_keys.diffusers_to_official(tensors, n_layers)
        except KeyError as e:
            raise WanMeterError(f"{folder.name} has a diffusers key {e.args[0]!r} that a Wan2.2 transformer does not have. "
                                "It is another model or a modified Wan; use an official Wan2.2 release.") from None
        tensors = {o: tensors[d] for o, d in mapping.items()}
        sources = {o: sources[d] for o, d in mapping.items()}
    info = _build_info(folder, tensors, sources, layout=layout, file_bytes=total, files=tuple(shards),
                       prefix="", keys_format=keys_format)
    _check_folder_config(folder, cfg, info)
    return info


def _check_folder_config(folder: Path, cfg: dict[str, Any], info: DiTInfo) -> None:
    """A config.json that disagrees with the tensors means mixed-up files; say so."""
    pairs = {"dim": info.dim, "num_layers": info.num_layers, "in_dim": info.config["in_channels"],
             "in_channels": info.config["in_channels"], "ffn_dim": info.config["ffn_dim"]}
    for k, actual in pairs.items():
        if k in cfg and isinstance(cfg[k], int) and cfg[k] != actual:
            raise WanMeterError(f"{folder}/config.json says {k}={cfg[k]} but the weights have {actual}. "
                                "The folder mixes files of two models: download it again.")


# --- the decision --------------------------------------------------------------------------

def _magic(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def _shape(tensors: dict[str, TensorMeta], key: str, where: Path) -> tuple[int, ...]:
    if key not in tensors:
        raise WanMeterError(f"{where.name} lacks {key!r}, which every Wan2.2 diffusion model has. "
                            "The file is incomplete or another model: download the Wan2.2 release again.")
    return tensors[key].shape


def _expert_hint(p: Path) -> str | None:
    name = str(p).lower()
    if "high_noise" in name or "high-noise" in name:
        return "high"
    if "low_noise" in name or "low-noise" in name:
        return "low"
    return None


def _build_info(p: Path, tensors: dict[str, TensorMeta], sources: dict[str, tuple[Path, str]], *,
                layout: str, file_bytes: int, files: tuple[Path, ...], prefix: str,
                keys_format: str = "official", quant: dict[str, str] | None = None) -> DiTInfo:
    try:
        return _decide(p, tensors, sources, layout=layout, file_bytes=file_bytes, files=files, prefix=prefix,
                       keys_format=keys_format, quant=quant)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        # Wan key names with shapes no Wan2.2 model has (a hand-edited or foreign file)
        raise WanMeterError(f"{p.name} has Wan key names but tensor shapes no Wan2.2 diffusion model has "
                            f"({type(e).__name__}: {e}). Use an official Wan2.2 release.") from None


def _decide(p: Path, tensors: dict[str, TensorMeta], sources: dict[str, tuple[Path, str]], *,
            layout: str, file_bytes: int, files: tuple[Path, ...], prefix: str,
            keys_format: str = "official", quant: dict[str, str] | None = None) -> DiTInfo:
    keys = list(tensors)
    if not keys:
        raise WanMeterError(f"{p.name} holds no tensors. Download it again.")
    foreign = dit_keys.describe_foreign(keys)
    if foreign:
        raise WanMeterError(f"{p.name} is {foreign}.")
    unsupported = dit_keys.describe_unsupported_wan(keys)
    if unsupported:
        raise WanMeterError(f"{p.name}: {unsupported}.")
    if "patch_embedding.weight" not in tensors or "blocks.0.self_attn.q.weight" not in tensors:
        sample = ", ".join(sorted(keys)[:4])
        raise WanMeterError(
            f"{p.name} does not look like a Wan2.2 diffusion model (no patch_embedding / blocks.N.self_attn keys; "
            f"first keys: {sample}). Pick a Wan2.2 diffusion model, e.g. wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors.")

    pe = _shape(tensors, "patch_embedding.weight", p)          # [dim, in, pt, ph, pw]
    if len(pe) != 5:
        raise WanMeterError(f"{p.name}: patch_embedding has shape {list(pe)}, not a 3-D conv. Not a Wan video model.")
    dim, in_ch, patch = pe[0], pe[1], tuple(pe[2:])
    head = _shape(tensors, "head.head.weight", p)
    out_ch = head[0] // math.prod(patch)
    ffn = _shape(tensors, "blocks.0.ffn.0.weight", p)[0]
    text_dim = _shape(tensors, "text_embedding.0.weight", p)[1]
    freq_dim = _shape(tensors, "time_embedding.0.weight", p)[1]
    n_layers = len(dit_keys.block_indices(keys))
    head_dim = _variants.head_dim()
    tiny = dim < TINY_DIM_LIMIT

    if dim == 1536:
        raise WanMeterError(
            f"{p.name} is a Wan2.1 1.3B model (dim 1536). WanMeter runs Wan2.2: for a small model use "
            "wan2.2_ti2v_5B_fp16.safetensors; otherwise the wan2.2 T2V/I2V 14B high/low noise files.")
    if dim % head_dim:
        raise WanMeterError(f"{p.name}: hidden size {dim} is not a multiple of {head_dim}; not a Wan2.2 DiT.")
    if n_layers == 0 or dit_keys.block_indices(keys) != set(range(n_layers)):
        raise WanMeterError(f"{p.name}: the transformer blocks are not numbered 0..N-1; the file is incomplete. Download it again.")

    has_audio = any(k.startswith("casual_audio_encoder.") for k in keys)
    if has_audio:
        variant = "s2v_14b"
        if (in_ch, out_ch) != (16, 16):
            raise WanMeterError(f"{p.name}: an S2V model with {in_ch}/{out_ch} channels; Wan2.2 S2V-14B has 16/16. Use the official S2V release.")
    elif (in_ch, out_ch) == (16, 16):
        variant = "t2v_a14b"
    elif (in_ch, out_ch) == (36, 16):
        variant = "i2v_a14b"
    elif (in_ch, out_ch) == (48, 48):
        variant = "ti2v_5b"
    else:
        raise WanMeterError(
            f"{p.name} is a Wan-style DiT with {in_ch} input / {out_ch} output channels, which matches no Wan2.2 "
            "variant (T2V/S2V 16/16, I2V 36/16, TI2V-5B 48/48). It is probably a Wan2.1 Fun/control fine-tune: "
            "use an official Wan2.2 diffusion model.")
    facts = _variants.variant(variant)
    if not tiny:
        got = {"dim": dim, "ffn_dim": ffn, "num_layers": n_layers}
        bad = {k: v for k, v in got.items() if v != facts[k]}
        if bad:
            want = {k: facts[k] for k in bad}
            raise WanMeterError(
                f"{p.name} has {in_ch} input channels like {facts['label']} but {bad} instead of {want}. "
                "It is a pruned/modified model or another Wan version; use the official Wan2.2 "
                f"{facts['label']} release.")

    config: dict[str, Any] = {
        "patch_size": list(patch),
        "num_attention_heads": dim // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": in_ch,
        "out_channels": out_ch,
        "text_dim": text_dim,
        "freq_dim": freq_dim,
        "ffn_dim": ffn,
        "num_layers": n_layers,
        "cross_attn_norm": "blocks.0.norm3.weight" in tensors,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in tensors else None,
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }
    dtypes: dict[str, int] = {}
    for k, m in tensors.items():
        if k == MARKER or k.endswith("." + MARKER) or k.endswith(_AUX_SUFFIXES):
            continue
        dtypes[m.dtype] = dtypes.get(m.dtype, 0) + m.numel
    return DiTInfo(
        path=p, variant=variant, config=config, layout=layout,
        dtype=max(dtypes, key=lambda d: dtypes[d]), dtypes=dtypes,
        scaled_fp8=is_scaled_fp8(keys), param_count=sum(dtypes.values()), file_bytes=file_bytes,
        files=files, key_prefix=prefix, tiny=tiny, expert_hint=_expert_hint(p), keys_format=keys_format,
        tensors=tensors, sources=sources, quant=dict(quant or {}))
