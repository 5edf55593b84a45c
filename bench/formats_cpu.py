"""Load time, weight memory and forward error of every checkpoint format, on the tiny models (CPU).

Usage: python bench/formats_cpu.py            (prints a markdown table; seconds on 2 cores)

For each file: load_dit time (best of 3, after one warm-up load of any file), bytes held by the
loaded transformer (parameters + buffers), and the forward's max relative error against the
bf16-weight float model the fixture was made from (fp32 compute, fixed inputs). Ratios are
within this run; absolute times depend on the machine and mean nothing for 14B files.
"""
from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from wanmeter.loader import load_dit  # noqa: E402
from wanmeter.tiny import ensure_tiny_models  # noqa: E402
from wanmeter.tiny.dit import tiny_reference_model  # noqa: E402

ROWS = [("bf16 (ComfyUI repackaged)", "dit_t2v_high", ["bf16"]),
        ("ComfyUI fp8_scaled", "dit_t2v_high_fp8_scaled", ["bf16", "fp8_e4m3fn"]),
        ("kijai fp8_e4m3fn_scaled", "dit_t2v_high_kj_fp8_scaled", ["bf16", "fp8_e4m3fn"]),
        ("comfy_quant fp8", "dit_t2v_high_cq_fp8", ["bf16", "file"]),
        ("comfy_quant int8", "dit_t2v_high_cq_int8", ["bf16", "file"]),
        ("comfy_quant mxfp8", "dit_t2v_high_cq_mxfp8", ["bf16", "file"]),
        ("comfy_quant nvfp4", "dit_t2v_high_cq_nvfp4", ["bf16", "file"]),
        ("GGUF Q8_0 (pack encoder)", "dit_t2v_high_q8_0", ["file"]),
        ("GGUF Q4_K_M (pack encoder)", "dit_t2v_high_gguf_q4_k_m", ["file"])]


def _forward(model, text_dim=64):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 16, text_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=ctx, return_dict=False)[0].float()


def _bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
               if not t.is_meta) - sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "rope" in n)


def _measure(path, wd, ref_out, text_dim=64):
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loaded = load_dit(path, weight_dtype=wd, compute_dtype="fp32")
        times.append(time.perf_counter() - t)
    out = _forward(loaded.model, text_dim)
    err = float((out - ref_out).abs().max() / ref_out.abs().max())
    return min(times), _bytes(loaded.model), err


def main() -> None:
    files = ensure_tiny_models(names=[r[1] for r in ROWS])
    ref = _forward(tiny_reference_model("t2v_a14b", "high"))
    load_dit(files["dit_t2v_high"], weight_dtype="bf16")  # warm-up (imports)
    print("| format | weight_dtype | load s (CPU, tiny, best of 3) | weights held | forward max rel. error |")
    print("|---|---|---|---|---|")
    for label, name, dtypes in ROWS:
        for wd in dtypes:
            s, b, e = _measure(files[name], wd, ref)
            print(f"| {label} | {wd} | {s:.3f} | {b / 2**20:.2f} MiB | {e:.2e} |", flush=True)
    from make_city96_gguf_fixture import MICRO, micro_reference_model

    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "micro_wan22_t2v-BF16.gguf"
        with gzip.open(ROOT / "tests/fixtures/city96_micro_wan22_t2v-BF16.gguf.gz", "rb") as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out)
        s, b, e = _measure(dst, "file", _forward(micro_reference_model(), MICRO["text_dim"]), MICRO["text_dim"])
        print(f"| GGUF BF16 (city96 convert.py, micro model) | file | {s:.3f} | {b / 2**20:.2f} MiB | {e:.2e} |")


if __name__ == "__main__":
    main()
