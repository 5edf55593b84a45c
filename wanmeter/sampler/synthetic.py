"""Random-weight diffusers Wan DiTs, tiny (tests, dry runs) or full size (GPU speed bench).

Speed does not depend on weight values, and the sampler's correctness is checked against
diffusers on the same weights, so neither needs real checkpoints. Full-size models are built
on the meta device, cast, materialised directly on the target device and filled in place
(no fp32 copy, no host round trip), keeping diffusers' fp32 modules in fp32 as from_pretrained does.
"""
from __future__ import annotations

import torch

from ..tiny.spec import TINY_DIT
from ..variants import head_dim, variant


def dit_config(variant_name: str, size: str = "tiny") -> dict:
    """diffusers WanTransformer3DModel kwargs for a variant at 'tiny' or 'full' size."""
    f = variant(variant_name)
    hd = head_dim()
    if size == "full":
        dim, ffn, layers, text_dim, freq = f["dim"], f["ffn_dim"], f["num_layers"], 4096, 256
    elif size == "tiny":
        dim, ffn, layers, text_dim, freq = (TINY_DIT[k] for k in ("dim", "ffn_dim", "num_layers", "text_dim", "freq_dim"))
    else:
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=dim // hd, attention_head_dim=hd,
        in_channels=f["in_channels"], out_channels=f["out_channels"], text_dim=text_dim, freq_dim=freq,
        ffn_dim=ffn, num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    )


def random_dit(variant_name: str, size: str = "tiny", *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, seed: int = 0, std: float = 0.05):
    """A WanTransformer3DModel with seeded random weights (norm scales near 1, the rest N(0, std))."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    cfg = dit_config(variant_name, size)
    device = torch.device(device)
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
    keep = set(model._keep_in_fp32_modules or ())
    for name, p in model.named_parameters():
        fp32 = bool(keep.intersection(name.split(".")))
        p.data = p.data.to(torch.float32 if fp32 else dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1, generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)
    # rope tables are computed buffers, lost by to_empty: rebuild them
    model.rope = WanRotaryPosEmbed(cfg["attention_head_dim"], cfg["patch_size"], cfg["rope_max_seq_len"]).to(device)
    return model.eval()
