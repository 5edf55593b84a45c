"""Load a GGUF-quantized Wan2.2 DiT (city96 layout) with diffusers' GGUF support; weights stay quantized.

Why GGUF: a 14B expert is 28.6 GB in bf16, 14.3 GB in fp8 and ~9 GB in Q4_K_M; on 8-16 GB GPUs
(and 32 GB of RAM holding two experts) that difference decides whether a run happens at all.

How: the tensors come from diffusers' `load_gguf_checkpoint` (quantized ones as `GGUFParameter`,
uint8 blocks), the config from the file's shapes (`inspect_gguf`, never a hub id), and
diffusers' `GGUFQuantizer` swaps the quantized nn.Linear layers for `GGUFLinear`, which
dequantizes its weight at every forward, layer by layer. What diffusers does not handle is fixed
here:
- city96's converter flattens tensors whose rows do not split into whole quant blocks (the 5-D
  patch_embedding, the [1, 6, dim] modulation tables) to rows of 256 values and records the
  real shape in `comfy.gguf.orig_shape.<name>`; diffusers ignores that field. Such tensors (and
  any quantized tensor that is not a linear weight) are dequantized and reshaped at load.
- Modules diffusers keeps in fp32 (time embedder, norms, modulation tables) are dequantized to
  fp32, as its quantizer does for `keep_in_fp32_modules`.
- Official key names are converted with diffusers' own Wan converter (dit_keys), strictly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import WanMeterError
from . import dit_keys
from .dit_inspect import DiTInfo
from .dit_loader import LoadedDiT, _set_tensor, build_empty_transformer, parse_dtype

_FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


@dataclass
class LoadedGGUFDiT(LoadedDiT):
    """A LoadedDiT whose linears are GGUF-quantized. weight_dtype is torch.uint8 (the block bytes).

    file_type: the usual name of the mix (Q4_K_M, Q5_K_M, Q6_K, Q8_0, ...); quant_types: number of
    parameters per tensor type in the file.
    """

    file_type: str = ""
    quant_types: dict[str, int] = field(default_factory=dict)

    @property
    def quantized_bytes(self) -> int:
        """Bytes held by the still-quantized weights (what stays in memory instead of bf16)."""
        return sum(p.numel() for p in self.model.parameters() if hasattr(p, "quant_type"))


def gguf_file_type(dtypes: dict[str, int]) -> str:
    """The usual name of a GGUF mix from its parameter count per tensor type.

    Q4_K with some Q6_K is Q4_K_M (the _S files have less Q6_K; both load the same way).
    """
    quant = {k: v for k, v in dtypes.items() if k not in _FLOAT_TYPES}
    if not quant:
        return max(dtypes, key=dtypes.get) if dtypes else ""
    main = max(quant, key=quant.get)
    if main in ("Q4_K", "Q5_K", "Q3_K"):
        return main + ("_M" if "Q6_K" in quant or "Q5_K" in quant and main != "Q5_K" else "_S")
    return main


def _is_linear_weight(model: torch.nn.Module, name: str) -> bool:
    mod_name, _, leaf = name.rpartition(".")
    return leaf == "weight" and isinstance(model.get_submodule(mod_name), torch.nn.Linear)


def _read_tensors(info: DiTInfo) -> dict[str, torch.Tensor]:
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    try:
        raw = load_gguf_checkpoint(str(info.path))
    except ValueError as e:  # diffusers: an unsupported quantization type
        first = str(e).splitlines()[0]
        raise WanMeterError(f"{info.path.name}: {first} Use a Q4_K_M, Q5_K_M, Q6_K or Q8_0 GGUF of the model.") from None
    n = len(info.key_prefix)
    return {k[n:]: v for k, v in raw.items()}


def load_gguf_dit(info: DiTInfo, *, compute_dtype: str | torch.dtype | None = None,
                  device: str | torch.device = "cpu") -> LoadedGGUFDiT:
    """Build a diffusers WanTransformer3DModel from a GGUF DiT with its linears kept quantized.

    compute_dtype: the dtype GGUFLinear dequantizes to and computes in (bf16 by default; fp16
    and fp32 work too). Called by load_dit for .gguf files.
    """
    from diffusers import GGUFQuantizationConfig
    from diffusers.quantizers.gguf.gguf_quantizer import GGUFQuantizer
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    if info.layout != "gguf":
        raise WanMeterError(f"{info.path.name} is not a GGUF file; load it with load_dit.")
    if info.variant == "s2v_14b":
        raise WanMeterError(f"{info.path.name} is an S2V-14B GGUF; WanMeter loads S2V only from .safetensors "
                            "(use wan2.2_s2v_14B_fp8_scaled.safetensors).")
    compute = parse_dtype(compute_dtype or "bf16", what="compute_dtype")
    if compute in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise WanMeterError("compute_dtype cannot be fp8 for a GGUF model (its weights are dequantized per layer). "
                            "Use bf16 or fp16.")
    dev = torch.device(device)

    model = build_empty_transformer(info.config)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    targets: dict[str, tuple[torch.dtype, tuple[int, ...], bool]] = {}
    for name, p in model.named_parameters():
        kept = any(m in name.split(".") for m in keep)
        targets[name] = (torch.float32 if kept else compute, tuple(p.shape), kept)

    to_diffusers = {o: d for d, o in dit_keys.official_to_diffusers(list(info.tensors)).items()}
    missing = sorted(set(targets) - set(to_diffusers.values()))
    unexpected = sorted(set(to_diffusers.values()) - set(targets))
    if missing or unexpected:
        back = {d: o for o, d in to_diffusers.items()}
        parts = ([f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (e.g. {', '.join(back[u] for u in unexpected[:3])})"] if unexpected else [])
        raise WanMeterError(f"{info.path.name} does not match the Wan2.2 {info.variant} transformer: {'; '.join(parts)}. "
                            "The file is incomplete or a modified model: download it again.")

    tensors = _read_tensors(info)
    quantized: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    for official, t in tensors.items():
        name = to_diffusers[official]
        want_dtype, want_shape, kept = targets[name]
        is_q = hasattr(t, "quant_type")
        if is_q and not kept and tuple(t.quant_shape) == want_shape and _is_linear_weight(model, name):
            quantized[name] = t
            continue
        if is_q:
            t = dequantize_gguf_tensor(t)
        if tuple(t.shape) != want_shape:
            if t.numel() != torch.Size(want_shape).numel():
                raise WanMeterError(f"{info.path.name}: tensor {official} holds {t.numel()} values, expected shape "
                                    f"{list(want_shape)}. The file is corrupt or another model: download it again.")
            t = t.reshape(want_shape)  # comfy.gguf.orig_shape: the real shape of a flattened tensor
        plain[name] = t.to(want_dtype).contiguous()
    del tensors

    quantizer = GGUFQuantizer(GGUFQuantizationConfig(compute_dtype=compute))
    quantizer.preprocess_model(model, device_map=None, keep_in_fp32_modules=list(keep), state_dict=quantized)
    for name, t in quantized.items():
        try:
            quantizer.check_quantized_param_shape(name, model.get_parameter(name), t)
        except ValueError as e:
            raise WanMeterError(f"{info.path.name}: {e}. The file is corrupt: download it again.") from None
        quantizer.create_quantized_param(model, t, name, dev)
    for name, t in plain.items():
        _set_tensor(model, name, t.to(dev))
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    if dev.type != "cpu":
        model.to(dev)  # the RoPE buffers
    model.eval()
    model.requires_grad_(False)
    return LoadedGGUFDiT(model=model, info=info, weight_dtype=torch.uint8, compute_dtype=compute,
                         file_type=gguf_file_type(info.dtypes), quant_types=dict(info.dtypes))
