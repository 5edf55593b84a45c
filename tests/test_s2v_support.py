"""Helpers for the S2V tests (no tests here): import the official Wan2.2 S2V code on a CPU box,
and small adapters the official pipeline needs (VAE in the official calling convention, text
encoder stand-in). Only the test harness swaps flash-attn for SDPA; the official maths is untouched.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_LOADED: dict[str, object] = {}


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def _sdpa_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                    causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None):
    """flash_attention's contract ([B, L, N, D] in and out) on SDPA; full-length sequences only."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
                                         is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).type_as(q)


class _Resize:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            h, w = img.shape[-2:]
            assert min(h, w) == self.size, "test harness: resize only supports same-size inputs"
            return img
        w, h = img.size
        assert min(h, w) == self.size, "test harness: resize only supports same-size inputs"
        return img


class _CenterCrop:
    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, img):
        hw = tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else (img.size[1], img.size[0])
        assert hw == self.size, "test harness: crop only supports same-size inputs"
        return img


class _ToTensor:
    def __call__(self, pic):
        return torch.from_numpy(np.array(pic, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def official_modules(ref: Path) -> dict[str, object]:
    """Import the official S2V model, scheduler, audio helpers and speech2video pipeline."""
    if _LOADED:
        return _LOADED
    import diffusers  # noqa: F401  (before any stub: diffusers probes optional packages at import)
    import transformers  # noqa: F401

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "wan" or k.startswith("wan.")}
    before = set(sys.modules)
    for pkg, sub in (("wan", ""), ("wan.modules", "modules"), ("wan.modules.s2v", "modules/s2v"),
                     ("wan.distributed", "distributed"), ("wan.utils", "utils"), ("wan.configs", "configs")):
        m = _stub(pkg)
        m.__path__ = [str(ref / "wan" / sub) if sub else str(ref / "wan")]  # type: ignore[attr-defined]
    for name in ("ftfy", "librosa", "decord"):
        if importlib.util.find_spec(name) is None:
            _stub(name, fix_text=lambda s: s, load=None, VideoReader=None)
    if importlib.util.find_spec("torchvision") is None:
        tv = _stub("torchvision")
        tv.transforms = _stub("torchvision.transforms", Resize=_Resize, CenterCrop=_CenterCrop, ToTensor=_ToTensor)
        tv.transforms.functional = _stub("torchvision.transforms.functional")
    # t5.py evaluates torch.cuda.current_device() at import; the pipeline's text encoder is stubbed anyway
    _stub("wan.modules.t5", T5EncoderModel=None)
    _stub("wan.distributed.fsdp", shard_model=None)
    attention = importlib.import_module("wan.modules.attention")
    attention.flash_attention = _sdpa_attention
    model = importlib.import_module("wan.modules.model")
    model.flash_attention = _sdpa_attention
    s2v = importlib.import_module("wan.modules.s2v.model_s2v")
    s2v.flash_attention = _sdpa_attention
    _LOADED.update(
        model_s2v=s2v,
        audio_encoder=importlib.import_module("wan.modules.s2v.audio_encoder"),
        unipc=importlib.import_module("wan.utils.fm_solvers_unipc"),
        speech2video=importlib.import_module("wan.speech2video"),
        librosa=sys.modules["librosa"],
    )
    # leave sys.modules as found: other tests import the official tree their own way
    for k in set(sys.modules) - before:
        if k == "wan" or k.startswith("wan.") or k.split(".")[0] in ("ftfy", "librosa", "decord", "torchvision"):
            del sys.modules[k]
    sys.modules.update(saved)
    return _LOADED


def load_support():
    """This module, importable from tests run with --import-mode=importlib."""
    return sys.modules[__name__]


def official_tiny_model(mods, sd: dict[str, torch.Tensor]):
    """WanModel_S2V with the official S2V-14B settings at tiny size, strictly loaded with `sd`."""
    from wanmeter.tiny.s2v import tiny_s2v_config

    c = tiny_s2v_config()
    m = mods["model_s2v"].WanModel_S2V(
        cond_dim=c.cond_dim, audio_dim=c.audio_dim, num_audio_token=c.num_audio_tokens, enable_adain=True,
        adain_mode="attn_norm", audio_inject_layers=[0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39], zero_init=True,
        zero_timestep=True, enable_motioner=False, add_last_motion=True, enable_tsm=False,
        trainable_token_pos_emb=False, enable_framepack=True, framepack_drop_mode="padd", model_type="s2v",
        patch_size=(1, 2, 2), text_len=512, in_dim=c.in_channels, dim=c.dim, ffn_dim=c.ffn_dim, freq_dim=c.freq_dim,
        text_dim=c.text_dim, out_dim=c.out_channels, num_heads=c.num_heads, num_layers=c.num_layers,
        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
    m.load_state_dict(sd, strict=True)
    return m.float().eval().requires_grad_(False)


class OfficialVAE:
    """The official Wan2_1_VAE calling convention (lists of [C, T, H, W] in -1..1, normalized
    latents) on top of our WanVAE, so both pipelines share one VAE and the test isolates the
    S2V logic."""

    def __init__(self, vae):
        self.vae = vae
        self.dtype = torch.float32
        self.device = torch.device("cpu")

    def encode(self, videos):
        out = []
        for v in videos:
            if v.ndim == 5:
                v = v[0]
            imgs = ((v.float() + 1) / 2).permute(1, 2, 3, 0)  # [T, H, W, C] 0..1
            out.append(self.vae.normalize(self.vae.encode(imgs))[0])
        return out

    def decode(self, zs):
        out = []
        for z in zs:
            if z.ndim == 4:
                z = z[None]
            imgs = self.vae.decode(self.vae.denormalize(z.float()))  # [F, H, W, C] 0..1
            out.append((imgs * 2 - 1).clamp(-1, 1).permute(3, 0, 1, 2))
        return out


class _TextStub:
    def __init__(self, table):
        self.table = table
        self.model = types.SimpleNamespace(to=lambda *a, **k: None, cpu=lambda: None)

    def __call__(self, prompts, device):
        return [self.table[p] for p in prompts]


class FastVAE:
    """A cheap linear stand-in with WanVAE's contract (IMAGE 0..1 <-> raw latent, Wan2.1 strides
    and normalisation constants). The diffusers Wan VAE takes about a minute on CPU for one
    clip's 153 frames even at tiny width; the S2V tests share this stand-in between our
    pipeline and the official one, so they still isolate the S2V logic."""

    family = "wan21"
    z_dim = 16

    def __init__(self, seed: int = 0):
        from wanmeter.variants import vae_family

        g = torch.Generator().manual_seed(seed)
        self.enc = torch.randn(16, 3, generator=g)
        self.dec = torch.linalg.pinv(self.enc) * 0.5
        facts = vae_family("wan21")
        self._mean = torch.tensor(facts["latents_mean"]).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(facts["latents_std"]).view(1, -1, 1, 1, 1)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def encode(self, images):
        x = images.float() * 2 - 1  # [F, H, W, 3]
        assert (x.shape[0] - 1) % 4 == 0, "Wan VAEs take 1 + 4k frames"
        frames = [x[0]] + [x[i:i + 4].mean(0) for i in range(1, x.shape[0], 4)]
        x = torch.stack(frames).permute(0, 3, 1, 2)  # [T, 3, H, W]
        x = F.avg_pool2d(x, 8)
        return torch.einsum("zc,tchw->zthw", self.enc, x)[None] * 0.7 + 0.1

    def decode(self, z, tiled=False):
        z = (z.float() - 0.1) / 0.7
        x = torch.einsum("cz,bzthw->btchw", self.dec, z)[0]
        x = torch.cat([x[:1], x[1:].repeat_interleave(4, dim=0)])
        x = F.interpolate(x, scale_factor=8, mode="nearest")
        x = torch.tanh(x + 0.05 * torch.arange(x.shape[0]).view(-1, 1, 1, 1) / x.shape[0])
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous()

    def normalize(self, raw):
        return (raw - self._mean) / self._std

    def denormalize(self, norm):
        return norm * self._std + self._mean
