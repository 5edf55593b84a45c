"""Where a forward's time goes: a few full-width Wan blocks per configuration, timed and profiled.

Run on one GPU (diffusers; --comfy for ComfyUI's native model):
    python bench/profile_forward.py --comfy /path/to/ComfyUI --case a14b_720p --layers 4

Speed per block does not depend on the number of blocks, so a 4-block model at full width and
full token count shows each configuration's per-block cost in seconds instead of minutes. For
each configuration: median forward time over --reps, per-block time, and the --top CUDA kernels
by total time from torch.profiler (one forward). Configurations:
    diffusers   WanTransformer3DModel as shipped (PyTorch's default SDPA choice)
    cudnn       same, diffusers' _native_cudnn backend
    comfy       ComfyUI's WanModel on the same weight tensors
    8bit        our 8-bit self-attention processor (eager; quantization compiled on its own)
    8bit_compile, fp8_8bit_compile   with regional compile, and with fp8 linears as well
Raw JSON to $OUT (or bench/results).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import speed  # noqa: E402  (bench/speed.py: model builders and timing)

import torch  # noqa: E402

CONFIGS = ("diffusers", "cudnn", "comfy", "8bit", "8bit_compile", "fp8_8bit_compile")


def top_kernels(fn, n: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append({"name": e.key[:110], "ms": t / 1000.0, "calls": e.count})
    rows.sort(key=lambda r: -r["ms"])
    return rows[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="a14b_720p", choices=list(speed.CASES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--comfy", default=os.environ.get("WANMETER_COMFYUI", ""))
    args = ap.parse_args(argv)
    from wanmeter.accel import compile_blocks, swap_fp8_linears
    from wanmeter.accel.fp8_linear import Fp8Linear, quantize_rows
    from wanmeter.accel.wan_attention import install_wan_attention, remove_wan_attention
    from wanmeter.runtime.attention import apply_attention

    env = speed.Env(False)
    var, w, h, frames = speed.CASES[args.case]
    kw = speed.dit_kwargs(var, env)
    kw["num_layers"] = args.layers
    model = speed.build_diffusers(kw, env)
    x, ts, ctx, tokens = speed.make_inputs(var, w, h, frames, kw, env)
    print(f"{env.name}: {args.case} {tokens} tokens, {args.layers} blocks", flush=True)
    results, ref = [], {}

    def fwd():
        with torch.no_grad():
            return model(hidden_states=x, timestep=ts, encoder_hidden_states=ctx, return_dict=False)[0]

    def run(cfg: str, fn) -> None:
        row = {"config": cfg}
        try:
            out = fn().float()
            torch.cuda.synchronize()
            s, all_t, _ = speed.time_fn(env, fn, args.reps, 1)
            ref.setdefault("out", out)
            row.update(seconds=s, per_block_ms=1000 * s / args.layers, timings=all_t,
                       cos_vs_diffusers=speed.cosine(out, ref["out"]), kernels=top_kernels(fn, args.top))
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            row["trace"] = traceback.format_exc()[-2500:]
        results.append(row)
        if "error" in row:
            print(f"\n{cfg}: ERROR {row['error']}\n{row['trace'][-1200:]}", flush=True)
            return
        print(f"\n{cfg}: {row['seconds'] * 1000:.1f} ms/forward, {row['per_block_ms']:.1f} ms/block, "
              f"cos vs diffusers {row['cos_vs_diffusers']:.6f}", flush=True)
        for k in row["kernels"]:
            print(f"    {k['ms']:9.2f} ms {k['calls']:5d}x  {k['name']}")

    wanted = [c.strip() for c in args.configs.split(",")]
    if "diffusers" in wanted:
        run("diffusers", fwd)
    if "cudnn" in wanted:
        apply_attention(model, "sdpa_cudnn", env.device)
        run("cudnn", fwd)
    if "comfy" in wanted and args.comfy:
        cm, _ = speed.build_comfy_sharing(model, kw, env, args.comfy)
        run("comfy", lambda: cm(x, ts, ctx))
        del cm
    apply_attention(model, "auto", env.device)
    if "8bit" in wanted:
        install_wan_attention(model, "8bit", env.device)
        run("8bit", fwd)
        remove_wan_attention(model)
    if "8bit_compile" in wanted:
        install_wan_attention(model, "8bit", env.device)
        compile_blocks(model)
        run("8bit_compile", fwd)
        speed.uncompile(model)
        remove_wan_attention(model)
    if "fp8_8bit_compile" in wanted:
        swap_fp8_linears(model, emulate=False, fused_quant=False)
        for m in model.modules():
            if isinstance(m, Fp8Linear):
                m.quantize = quantize_rows
        install_wan_attention(model, "8bit", env.device)
        compile_blocks(model)
        run("fp8_8bit_compile", fwd)
    out_dir = Path(os.environ.get("OUT") or HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_forward_{args.case}_{args.layers}blocks.json"
    path.write_text(json.dumps({"device": env.name, "case": args.case, "tokens": tokens, "layers": args.layers,
                                "results": results}, indent=1))
    print(f"\nraw JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
