"""ComfyUI umt5-xxl single files -> transformers' UMT5EncoderModel + the embedded SentencePiece tokenizer.

ComfyUI ships the Wan text encoder as one safetensors file (umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled)
with Hugging Face key names and the tokenizer model stored as a uint8 tensor `spiece_model`.
transformers has the model but wants a hub config and tokenizer; we build the UMT5Config from
tensor shapes and run SentencePiece on the embedded bytes, so nothing is fetched.

Encoding follows the official Wan code (and diffusers' WanPipeline): light text cleaning, at most
512 tokens with EOS appended, attention mask over the real tokens, each prompt's output cut to its
token count and zero-padded to 512. We run the encoder only up to the longest prompt in the batch:
padded key positions are masked out, so the real positions come out identical to a full 512 run.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path

import torch

from ..errors import WanMeterError
from .fp8_scaled import dequantize_scaled_fp8, is_scaled_fp8
from .safetensors_io import check_finite, read_header

TEXT_LEN = 512
_FIX = ("Wan2.2 needs the umt5-xxl encoder: put umt5_xxl_fp16.safetensors or "
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors in models/text_encoders and select it.")
_Q0 = "encoder.block.0.layer.0.SelfAttention.q.weight"


def clean_prompt(text: str) -> str:
    """The official 'whitespace' cleaning without ftfy: unescape HTML twice, collapse whitespace.

    (ftfy's mojibake repair is left out: it is a no-op on normal typed prompts and ftfy is not a
    dependency; ComfyUI itself applies no cleaning at all.)
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
    """SentencePiece tokenizer from serialized model bytes, with Wan's 512-token convention."""

    def __init__(self, model_bytes: bytes, text_len: int = TEXT_LEN):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
        self.text_len = text_len
        eos = self.sp.eos_id()
        self.eos_id = eos if eos >= 0 else self.sp.piece_to_id("</s>")
        pad = self.sp.pad_id()
        self.pad_id = pad if pad >= 0 else 0

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (ids [B, text_len], mask [B, text_len]); truncated to text_len with EOS last."""
        rows = []
        for p in prompts:
            ids = self.sp.encode(clean_prompt(p))[: self.text_len - 1] + [self.eos_id]
            rows.append(ids)
        ids = torch.full((len(rows), self.text_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), self.text_len), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i not in (self.pad_id, self.eos_id)])


class WanTextEncoder:
    """umt5-xxl encoder + tokenizer. encode(prompts) -> [B, 512, d_model], zero beyond each prompt."""

    def __init__(self, model, tokenizer: UMT5Tokenizer, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.text_len = tokenizer.text_len
        self.d_model = int(model.config.d_model)

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenizer(list(prompts))
        lens = mask.sum(dim=1)
        n = int(lens.max())
        hidden = self.model(
            input_ids=ids[:, :n].to(self.device), attention_mask=mask[:, :n].to(self.device)
        ).last_hidden_state
        out = torch.zeros((len(prompts), self.text_len, self.d_model), dtype=hidden.dtype, device=hidden.device)
        for i, l in enumerate(lens.tolist()):
            out[i, :l] = hidden[i, :l]
        return out


def _describe(keys: set[str]) -> str:
    if any("text_model.encoder.layers" in k for k in keys):
        return "a CLIP text encoder"
    if any(".self_attn.q.weight" in k or "patch_embedding.weight" in k for k in keys):
        return "a Wan diffusion model (DiT), which belongs in models/diffusion_models"
    if any(k.startswith(("decoder.upsamples", "encoder.downsamples", "decoder.up_blocks", "decoder.up.")) for k in keys):
        return "a VAE, which belongs in models/vae"
    if any(k.startswith("model.layers.") for k in keys):
        return "an LLM text encoder (Llama/Qwen/Gemma)"
    if any("wav2vec" in k or "feature_extractor" in k for k in keys):
        return "an audio encoder"
    return "not a text encoder Wan2.2 can use"


def inspect_text_encoder(path: str | os.PathLike) -> tuple[str, dict]:
    """Read the header only; return (key prefix, UMT5Config kwargs) or raise naming the right file."""
    hdr = read_header(path)
    try:
        return _inspect(hdr)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise WanMeterError(f"{hdr.path.name} has umt5 key names but tensor shapes umt5-xxl does not have "
                            f"({type(e).__name__}: {e}). {_FIX}") from None


def _inspect(hdr) -> tuple[str, dict]:
    name = hdr.path.name
    q0 = [k for k in hdr.tensors if k.endswith(_Q0)]
    if not q0:
        raise WanMeterError(f"{name} is {_describe(set(hdr.tensors))}, not umt5-xxl. {_FIX}")
    prefix = q0[0][: -len(_Q0)]
    t = {k[len(prefix):]: m for k, m in hdr.tensors.items() if k.startswith(prefix)}
    layers = 0
    while f"encoder.block.{layers}.layer.0.SelfAttention.q.weight" in t:
        layers += 1
    rel = [i for i in range(layers) if f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" in t]
    if rel != list(range(layers)) or layers < 2:
        kind = "T5-XXL v1.1 (the Flux/SD3 text encoder: one shared position bias)" if rel == [0] else "a T5-family encoder but not umt5"
        raise WanMeterError(f"{name} is {kind}, not umt5-xxl (a position bias in every layer). {_FIX}")
    if f"encoder.block.0.layer.1.DenseReluDense.wi_0.weight" not in t:
        raise WanMeterError(f"{name} is a T5 encoder without the gated feed-forward of umt5. {_FIX}")
    emb = t.get("shared.weight") or t.get("encoder.embed_tokens.weight")
    if emb is None:
        raise WanMeterError(f"{name} has no token embedding (shared.weight): the file is incomplete. Download it again.")
    vocab, d_model = emb.shape
    heads = t["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    inner = t[_Q0].shape[0]
    cfg = dict(
        vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner // heads[1]),
        d_ff=int(t["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
        num_layers=layers, num_decoder_layers=layers, num_heads=int(heads[1]),
        relative_attention_num_buckets=int(heads[0]), relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
        is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
    )
    if "spiece_model" not in t:
        raise WanMeterError(
            f"{name} has no embedded tokenizer (the `spiece_model` tensor of ComfyUI's repackaged files). {_FIX}"
        )
    return prefix, cfg


def load_text_encoder(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
) -> WanTextEncoder:
    """Load a ComfyUI umt5-xxl file (fp16/bf16/fp32 or fp8_e4m3fn_scaled) as a WanTextEncoder."""
    from safetensors import safe_open
    from transformers import UMT5Config, UMT5EncoderModel

    prefix, cfg = inspect_text_encoder(path)
    # Tensor by tensor, so the peak is the final model plus one tensor (not the file plus the model).
    sd: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = {k[len(prefix):] for k in f.keys() if k.startswith(prefix)}
        scaled = is_scaled_fp8(names)
        tokenizer = UMT5Tokenizer(f.get_tensor(prefix + "spiece_model").to(torch.uint8).numpy().tobytes())
        for k in sorted(names):
            if not k.startswith(("encoder.", "shared.")) or k.endswith((".scale_weight", ".scale_input")):
                continue
            v = f.get_tensor(prefix + k)
            if not v.is_floating_point():
                continue
            scale = k[: -len(".weight")] + ".scale_weight"
            if scaled and k.endswith(".weight") and scale in names:
                v = dequantize_scaled_fp8({k: v, scale: f.get_tensor(prefix + scale)}, dtype)[k]
            check_finite(v, prefix + k, path)
            sd[k] = v.to(dtype)
    if "shared.weight" not in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    sd.pop("encoder.embed_tokens.weight", None)

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**cfg))
    expected = {k for k in model.state_dict() if k != "encoder.embed_tokens.weight"}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise WanMeterError(
            f"{Path(path).name} looks like umt5 but its tensors do not match "
            f"({'missing ' + str(missing[:3]) if missing else 'unexpected ' + str(unexpected[:3])}). "
            "The file is damaged or modified: download it again."
        )
    model.load_state_dict(sd, strict=False, assign=True)
    model.encoder.embed_tokens = model.shared  # tied in UMT5; assign=True replaced only `shared`
    dev = torch.device(device)
    model = model.to(dev).eval().requires_grad_(False)
    return WanTextEncoder(model, tokenizer, dev, dtype)
