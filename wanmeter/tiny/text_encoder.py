"""A tiny random umt5 encoder in ComfyUI's single-file layout (fp16 and fp8_e4m3fn_scaled).

The tokenizer is a real SentencePiece unigram model trained in-process on a small built-in
English corpus and embedded as the uint8 `spiece_model` tensor, exactly where ComfyUI's
umt5_xxl files keep theirs, so the loader's tokenizer path is the production one. Sizes come from
spec.TINY_UMT5 (d_model 64 = the tiny DiTs' text_dim). Everything is seeded and single-threaded,
so the files are byte-identical on every run.
"""
from __future__ import annotations

import io
import math
from functools import partial
from pathlib import Path

import torch

from . import register
from .spec import SEED, TINY_UMT5

VERSION = "1"

FILE_NAMES = {"fp16": "tiny_umt5_xxl_fp16.safetensors", "fp8_scaled": "tiny_umt5_xxl_fp8_e4m3fn_scaled.safetensors"}
SPM_VOCAB = 320        # SentencePiece pieces
EMBED_VOCAB = 384      # embedding rows (padded past the tokenizer, as the real 256384-row umt5 is)

_SUBJECTS = ["a red fox", "an old fisherman", "two children", "a white cat", "a golden retriever", "a young woman",
             "a robot", "a flock of birds", "a steam train", "a small sailboat", "an astronaut", "a street musician"]
_ACTIONS = ["walks slowly through", "runs across", "sits quietly in", "dances in", "looks around", "jumps over",
            "drifts across", "rides through", "plays music in", "waits patiently in"]
_PLACES = ["a snowy forest", "a busy city street at night", "a sunlit meadow", "the calm ocean at sunset",
           "a rainy market", "a quiet library", "the desert under bright stars", "a mountain village",
           "a neon lit alley", "a field of sunflowers"]
_STYLES = ["cinematic lighting", "slow camera pan", "close up shot", "wide angle view", "soft warm colors",
           "high detail, realistic", "handheld camera, shallow depth of field", "golden hour light",
           "low quality, blurry, distorted", "static frame, overexposed, worst quality"]


_EXTRA = """The quick brown fox jumps over the lazy dog near the river bank.
Camera moves forward slowly; light rain falls on the wet pavement & reflections shimmer.
She smiles, turns her head to the left and waves at the camera (3 seconds).
Ultra detailed 4K footage of waves crashing against black volcanic rocks!
A chef chops fresh vegetables in a bright modern kitchen, steam rising from pots.
Wind blows through tall grass while clouds move quickly over green hills.
An elephant family crosses a dusty road at dawn; birds fly above them.
Fireworks explode over the harbor and people cheer on the crowded bridge.
The dancer spins gracefully on stage under a single blue spotlight.
Leaves fall from the autumn trees in the park as a dog chases a ball.
Macro shot: a drop of water lands on a leaf, ripples spread outward.
Bad anatomy, extra fingers, jpeg artifacts, watermark, text, ugly, deformed, 0 1 2 5 7 8 9.
Hyperrealistic portrait, dramatic shadows, film grain, vintage look, 35mm lens.
Traffic flows along the highway at dusk while headlights glow in long exposure.
Snow gently covers the rooftops of the sleeping town; smoke curls from chimneys.
A horse gallops along the beach, kicking up sand and spray, sunrise behind it.""".splitlines()


def corpus() -> list[str]:
    """A deterministic list of short video-prompt-like English sentences."""
    lines = list(_EXTRA)
    for i, s in enumerate(_SUBJECTS):
        for j, a in enumerate(_ACTIONS):
            p = _PLACES[(i + j) % len(_PLACES)]
            st = _STYLES[(i * 3 + j) % len(_STYLES)]
            lines.append(f"{s.capitalize()} {a} {p}, {st}.")
    return lines


def train_spiece_model() -> bytes:
    """Train the tiny unigram SentencePiece model (ids: pad 0, eos 1, unk 2, like umt5)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=SPM_VOCAB, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
        shuffle_input_sentence=False, input_sentence_size=0, hard_vocab_limit=False, minloglevel=2,
    )
    return buf.getvalue()


def tiny_umt5_state_dict() -> dict[str, torch.Tensor]:
    """Random umt5 encoder weights with ComfyUI/HF key names (float32) plus `spiece_model`."""
    c = TINY_UMT5
    d, ff, h, kv = c["d_model"], c["d_ff"], c["num_heads"], c["d_kv"]
    inner = h * kv
    gen = torch.Generator().manual_seed(SEED + 5)

    def rnd(*shape, std):
        return torch.randn(shape, generator=gen) * std

    sd: dict[str, torch.Tensor] = {"shared.weight": rnd(EMBED_VOCAB, d, std=1.0)}
    for i in range(c["num_layers"]):
        b = f"encoder.block.{i}.layer."
        sd[b + "0.layer_norm.weight"] = 1.0 + rnd(d, std=0.1)
        for n, shape in (("q", (inner, d)), ("k", (inner, d)), ("v", (inner, d)), ("o", (d, inner))):
            sd[b + f"0.SelfAttention.{n}.weight"] = rnd(*shape, std=1.0 / math.sqrt(shape[1]))
        sd[b + "0.SelfAttention.relative_attention_bias.weight"] = rnd(c["relative_attention_num_buckets"], h, std=0.5)
        sd[b + "1.layer_norm.weight"] = 1.0 + rnd(d, std=0.1)
        sd[b + "1.DenseReluDense.wi_0.weight"] = rnd(ff, d, std=1.0 / math.sqrt(d))
        sd[b + "1.DenseReluDense.wi_1.weight"] = rnd(ff, d, std=1.0 / math.sqrt(d))
        sd[b + "1.DenseReluDense.wo.weight"] = rnd(d, ff, std=1.0 / math.sqrt(ff))
    sd["encoder.final_layer_norm.weight"] = 1.0 + rnd(d, std=0.1)
    sd["spiece_model"] = torch.frombuffer(bytearray(train_spiece_model()), dtype=torch.uint8).clone()
    return sd


def _is_linear(key: str, t: torch.Tensor) -> bool:
    return t.ndim == 2 and (".SelfAttention." in key or ".DenseReluDense." in key) and "relative_attention_bias" not in key


def _tensors(kind: str) -> dict[str, torch.Tensor]:
    from ..loader.fp8_scaled import quantize_scaled_fp8

    sd = tiny_umt5_state_dict()
    fp16 = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    return fp16 if kind == "fp16" else quantize_scaled_fp8(fp16, _is_linear)


def write_tiny_text_encoder(dest: str | Path, kind: str = "fp16") -> Path:
    """Write the tiny umt5 file of `kind` ("fp16" or "fp8_scaled") to exactly `dest`."""
    from safetensors.torch import save_file

    dest = Path(dest)
    save_file({k: v.contiguous() for k, v in _tensors(kind).items()}, str(dest),
              metadata={"wanmeter_tiny": f"umt5/{kind}/v{VERSION}"})
    return dest


def fixture_name(kind: str) -> str:
    """Registry name: umt5_fp16, umt5_fp8_scaled."""
    return f"umt5_{kind}"


for _kind in ("fp16", "fp8_scaled"):
    register(fixture_name(_kind), partial(write_tiny_text_encoder, kind=_kind), f"text_encoders/{FILE_NAMES[_kind]}",
             version=VERSION)
