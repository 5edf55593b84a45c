"""Write the micro Wan2.2 T2V DiT that tests/fixtures/city96_*.gguf were converted from.

Why micro: a GGUF made by city96's tools/convert.py must be committed as test data (< 200 KB),
and the smallest DiT in the real Wan layout (head_dim 128 forces dim >= 128; time_projection is
dim x 6*dim) has ~0.3M weights. Its weights lie on a coarse grid (multiples of 1/256 in
[-4/256, 4/256], norm gains 1 + the same), so the BF16 GGUF compresses well; it is committed
gzipped. Usage (see tests/fixtures/README.md for the full recipe):

    python tools/make_city96_gguf_fixture.py /tmp/city96/micro_wan22_t2v.safetensors
"""
from __future__ import annotations

import sys

MICRO = {"patch_size": [1, 2, 2], "num_attention_heads": 1, "attention_head_dim": 128, "in_channels": 16,
         "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 128, "num_layers": 1,
         "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
         "added_kv_proj_dim": None, "rope_max_seq_len": 1024, "pos_embed_seq_len": None}
SEED = 96


def micro_reference_model():
    """The float32 diffusers model the fixture holds (weights on the grid, so bf16-exact)."""
    import torch
    from diffusers import WanTransformer3DModel

    g = torch.Generator().manual_seed(SEED)
    model = WanTransformer3DModel(**MICRO).eval()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            v = torch.randint(-4, 5, p.shape, generator=g).float() / 256.0
            leaf = name.split(".")[-2] if name.count(".") else name
            if "norm" in leaf and name.endswith("weight"):
                v = 1.0 + v
            p.copy_(v)
    return model


def micro_official_state_dict():
    import torch

    from wanmeter.loader.dit_keys import diffusers_to_official

    sd = micro_reference_model().state_dict()
    names = diffusers_to_official(sd.keys(), MICRO["num_layers"])
    return {o: sd[d].to(torch.bfloat16).contiguous() for o, d in sorted(names.items())}


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from safetensors.torch import save_file

    save_file(micro_official_state_dict(), sys.argv[1])
    print("wrote", sys.argv[1])
