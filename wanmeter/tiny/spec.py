"""Sizes of the tiny random models used by the tests, the demo and the end-to-end suite.

One place, so the tiny DiT's text_dim matches the tiny umt5's d_model, the tiny VAEs' latent
channels match the DiT's in/out channels, and so on. The real models keep head_dim 128, so the
tiny DiTs do too (2 heads): variant detection and config building then work on them unchanged.
"""

TINY_DIT = {
    "dim": 256,          # 2 heads x 128
    "ffn_dim": 512,
    "num_layers": 2,
    "freq_dim": 256,
    "text_dim": 64,      # == TINY_UMT5["d_model"]
}

TINY_UMT5 = {
    "d_model": 64,
    "d_ff": 128,
    "num_heads": 2,
    "d_kv": 32,
    "num_layers": 2,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
}

# Tiny VAEs keep the real latent channels and strides (16 / 48 channels, 4x8x8 / 4x16x16).
TINY_VAE = {
    "wan21": {"base_dim": 16, "z_dim": 16},
    "wan22": {"base_dim": 16, "z_dim": 48},
}

SEED = 1234
