"""One DiT forward, timed for diffusers as shipped, ComfyUI native, and our fast paths.

Run on one GPU (torch 2.11 + CUDA, diffusers, triton; ComfyUI checkout for the peer column):
    python bench/speed.py --comfy /path/to/ComfyUI --cases ti2v_5b_720p,a14b_480p
    python bench/speed.py --comfy /path/to/ComfyUI --cases a14b_720p --reps 2 --no-sample
    python bench/speed.py --dry-run --comfy /path/to/ComfyUI   # CPU, tiny sizes, every code path

Per case (full-size random bf16 weights built on the GPU, fixed random inputs, one model at a
time) the configs run in this order, on the same weights:
    diffusers   diffusers' WanTransformer3DModel as shipped (default attention)
    comfy       ComfyUI's native WanModel sharing the same weight tensors (disable_weight_init ops)
    ours        bf16, attention="auto" as the runtime applies it (best backend for the GPU and, on
                CUDA, our fused-rotary self-attention processor: wanmeter.accel.wan_attention)
    8bit        ours with attention="8bit": our Triton int8 Q.K / fp8 P.V kernel (eager blocks)
    compile     ours + regional torch.compile of the blocks
    fp8         ours + fp8 compute (rowwise-scaled _scaled_mm, compiled per-token quantization)
    fp8_compile ours + fp8 + regional compile (the quantization fuses into the block graph)
    fp8_8bit_compile  fp8 compute + 8-bit attention + regional compile (the fastest path)
fp8 replaces the bf16 block weights, so the fp8 configs come last. Each config: warm-up, then
the median of --reps forwards timed with CUDA events. Printed: seconds, TFLOP/s (closed-form
FLOPs, wanmeter.estimator.flops), fraction of the 8192^3 bf16 matmul peak measured in this run,
peak VRAM, speedups over diffusers and ComfyUI, cosine of the output vs the diffusers output.
--sample adds a 2-step CFG sample through wanmeter.sampler with the bf16 model and with the
final fast model and compares the latents. Raw JSON goes to $OUT (or bench/results).
A failing config is recorded with its error and the run goes on; --budget stops starting new
configs when the run nears the time limit (results so far are printed and saved).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from wanmeter.estimator.flops import DiTShape, forward_flops  # noqa: E402
from wanmeter.variants import vae_family, variant  # noqa: E402

GIB = 1024 ** 3
CASES = {
    "ti2v_5b_720p": ("ti2v_5b", 1280, 704, 121),
    "a14b_480p": ("t2v_a14b", 832, 480, 81),
    "a14b_720p": ("t2v_a14b", 1280, 720, 81),
}
CONFIGS = ("diffusers", "comfy", "ours", "8bit", "compile", "fp8", "fp8_compile", "fp8_8bit_compile")
TINY = {"dim": 256, "ffn_dim": 512, "num_layers": 2, "text_dim": 64, "heads": 2, "text_len": 16}
T0 = time.perf_counter()
BUDGET = [0.0]


def elapsed() -> float:
    return time.perf_counter() - T0


class Env:
    def __init__(self, dry: bool):
        self.dry = dry or not torch.cuda.is_available()
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.dtype = torch.bfloat16
        self.name = "cpu (dry run)" if self.dry else torch.cuda.get_device_name()
        self.capability = None if self.dry else torch.cuda.get_device_capability()

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    def clear(self) -> None:
        gc.collect()
        if not self.dry:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return None if self.dry else torch.cuda.max_memory_allocated() / GIB


def time_fn(env: Env, fn, reps: int, warmup: int) -> tuple[float, list[float], float]:
    """(median seconds, all timings, first-call seconds incl. compile). CUDA events on GPU."""
    t = time.perf_counter()
    for _ in range(warmup):
        fn()
    env.sync()
    first = time.perf_counter() - t
    ts = []
    for _ in range(reps):
        if env.dry:
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / 1000.0)
    return statistics.median(ts), ts, first


def matmul_peak(env: Env) -> float:
    n = 512 if env.dry else 8192
    a = torch.randn(n, n, device=env.device, dtype=env.dtype)
    b = torch.randn(n, n, device=env.device, dtype=env.dtype)
    s, _, _ = time_fn(env, lambda: a @ b, reps=3 if env.dry else 20, warmup=1 if env.dry else 5)
    del a, b
    return 2 * n ** 3 / s


# ------------------------------------------------------------------ models and inputs

def dit_kwargs(var: str, env: Env) -> dict:
    """The diffusers config of a variant at full size (tiny in --dry-run): the calibration script's."""
    from calibrate import dit_kwargs as _dit_kwargs

    return _dit_kwargs(var, env)


def build_diffusers(kw: dict, env: Env):
    """Random weights created directly on the device (default init of each layer), bf16 except
    diffusers' `_keep_in_fp32_modules` (as from_pretrained(torch_dtype=bf16) and our loader do)."""
    from diffusers import WanTransformer3DModel

    old = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            m = WanTransformer3DModel(**kw)
    finally:
        torch.set_default_dtype(old)
    keep = tuple(getattr(m, "_keep_in_fp32_modules", None) or ())
    with torch.no_grad():
        for name, p in m.named_parameters():
            want = torch.float32 if any(k in name.split(".") for k in keep) else env.dtype
            if p.dtype != want:
                p.data = p.data.to(want)
    return m.eval().requires_grad_(False)


def make_inputs(var: str, w: int, h: int, frames: int, kw: dict, env: Env):
    s = int(vae_family(variant(var)["vae"])["stride_s"])
    lf = (frames - 1) // 4 + 1
    lh, lw = (h // s, w // s) if not env.dry else (4, 6)
    lf = lf if not env.dry else 3
    text_len = TINY["text_len"] if env.dry else 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, kw["in_channels"], lf, lh, lw, generator=g).to(env.device, env.dtype)
    ctx = (0.5 * torch.randn(1, text_len, kw["text_dim"], generator=g)).to(env.device, env.dtype)
    t = torch.tensor([500.0], device=env.device)
    tokens = lf * (lh // 2) * (lw // 2)
    return x, t, ctx, tokens


def import_comfy(path: str, env: Env):
    """Import ComfyUI's Wan model module from a checkout (CPU mode for --dry-run)."""
    if not path or not (Path(path) / "comfy").is_dir():
        raise RuntimeError(f"--comfy {path!r} is not a ComfyUI checkout (no comfy/ folder inside)")
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        import PIL  # noqa: F401  (comfy.ldm.util imports it; unused by the Wan model)
    except ImportError:
        pil = types.ModuleType("PIL")
        for sub in ("Image", "ImageDraw", "ImageFont"):
            setattr(pil, sub, types.ModuleType(f"PIL.{sub}"))
            sys.modules[f"PIL.{sub}"] = getattr(pil, sub)
        sys.modules["PIL"] = pil
    import comfy.cli_args

    if env.dry:
        comfy.cli_args.args.cpu = True
    import comfy.ldm.modules.attention as cattn
    import comfy.ldm.wan.model as wan_model
    import comfy.ops

    return wan_model, comfy.ops, getattr(cattn.optimized_attention, "__name__", str(cattn.optimized_attention))


def build_comfy_sharing(dmodel, kw: dict, env: Env, comfy_path: str):
    """ComfyUI's WanModel built on the meta device, then given the diffusers model's own tensors
    (renamed with diffusers' converter, no copy), so both compute with identical weights."""
    from wanmeter.loader.dit_keys import official_to_diffusers

    wan_model, ops, attn_name = import_comfy(comfy_path, env)
    d = kw["num_attention_heads"] * kw["attention_head_dim"]
    cm = wan_model.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=kw["in_channels"], dim=d,
                            ffn_dim=kw["ffn_dim"], freq_dim=256, text_dim=kw["text_dim"], out_dim=kw["out_channels"],
                            num_heads=kw["num_attention_heads"], num_layers=kw["num_layers"], qk_norm=True,
                            cross_attn_norm=True, eps=1e-6, device="meta", dtype=env.dtype,
                            operations=ops.disable_weight_init)
    ckeys = list(cm.state_dict().keys())
    names = official_to_diffusers(ckeys)  # {diffusers_key: official_key}
    dsd = dmodel.state_dict()
    sd = {}
    for dk, ok in names.items():
        t = dsd[dk]
        if ok.startswith("patch_embedding."):
            t = t.float()  # ComfyUI keeps the patch conv in fp32 (it runs it on x.float())
        elif t.dtype != env.dtype:
            t = t.to(env.dtype)  # diffusers' fp32-kept norms/modulation: ComfyUI holds them in bf16
        sd[ok] = t
    missing = set(ckeys) - set(sd)
    if missing:
        raise RuntimeError(f"ComfyUI WanModel keys without a diffusers tensor: {sorted(missing)[:5]}")
    cm.load_state_dict(sd, strict=True, assign=True)
    return cm.eval().requires_grad_(False), attn_name


def uncompile(model) -> None:
    for b in model.blocks:
        if getattr(b, "_compiled_call_impl", None) is not None:
            b._compiled_call_impl = None
    model._wanmeter_compiled = False
    torch._dynamo.reset()


# ------------------------------------------------------------------ one case

def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def run_case(name: str, args, env: Env, peak: float, results: list, save) -> None:
    from dataclasses import replace

    from wanmeter.accel import best_attention_for, compile_blocks, swap_fp8_linears
    from wanmeter.accel.lowbit_attention import DEFAULT_CONFIG, lowbit_supported
    from wanmeter.accel.wan_attention import install_wan_attention, installed_kind
    from wanmeter.accel.fp8_linear import Fp8Linear, quantize_rows
    from wanmeter.runtime.attention import apply_attention

    var, w, h, frames = CASES[name]
    kw = dit_kwargs(var, env)
    env.clear()
    t = time.perf_counter()
    model = build_diffusers(kw, env)
    build_s = time.perf_counter() - t
    x, ts, ctx, tokens = make_inputs(var, w, h, frames, kw, env)
    shape = DiTShape(dim=kw["num_attention_heads"] * kw["attention_head_dim"], ffn_dim=kw["ffn_dim"],
                     num_layers=kw["num_layers"], in_channels=kw["in_channels"], out_channels=kw["out_channels"],
                     text_dim=kw["text_dim"])
    flops = forward_flops(shape, tokens, text_tokens=ctx.shape[1]).total
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    print(f"\n== {name}: {var} {w}x{h}x{frames}, {tokens} tokens, {flops / 1e15:.3f} PFLOP/forward, "
          f"weights {weights_gib:.1f} GiB, built in {build_s:.1f} s", flush=True)
    ref = {}
    best = best_attention_for(env.device)
    state = {"fp8": False, "compiled": False}

    def fwd_diffusers():
        with torch.no_grad():
            return model(hidden_states=x, timestep=ts, encoder_hidden_states=ctx, return_dict=False)[0]

    def record(cfg: str, fn, extra: dict | None = None) -> None:
        row = {"case": name, "variant": var, "size": f"{w}x{h}x{frames}", "tokens": tokens, "config": cfg,
               "flops": flops, **(extra or {})}
        if args.budget and elapsed() > args.budget:
            row["error"] = f"skipped: time budget {args.budget:.0f} s reached"
            results.append(row)
            print(f"  {cfg:12s} skipped (budget)", flush=True)
            return
        try:
            env.clear()
            t0 = time.perf_counter()
            out = fn()  # warm-up (and compilation) call; its output is the accuracy check
            env.sync()
            first = time.perf_counter() - t0
            s, all_t, _ = time_fn(env, fn, args.reps, 0)
            row.update(seconds=s, timings=all_t, first_call_s=first,
                       tflops=flops / s / 1e12, frac_matmul_peak=flops / s / peak, peak_vram_gib=env.peak_gib())
            o = out.float()
            if "diffusers" not in ref:
                ref["diffusers"] = o
            row["cos_vs_diffusers"] = cosine(o, ref["diffusers"])
            row["finite"] = bool(torch.isfinite(o).all())
            del out, o
        except Exception as e:  # noqa: BLE001 - one failing config must not kill the table
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            row["trace"] = traceback.format_exc()[-2000:]
        results.append(row)
        save()
        msg = row.get("error") or (f"{row['seconds']:.3f} s  {row['tflops']:.0f} TF/s  cos {row['cos_vs_diffusers']:.5f}  "
                                   f"peak {row['peak_vram_gib'] or 0:.1f} GiB")
        print(f"  {cfg:12s} {msg}", flush=True)

    wanted = [c for c in CONFIGS if c in args.configs]
    try:
        if "diffusers" in wanted or any(c in wanted for c in ("comfy",)):
            record("diffusers", fwd_diffusers, {"attention": "diffusers default (native SDPA)"})

        if "comfy" in wanted:
            cm = None
            try:
                cm, attn_name = build_comfy_sharing(model, kw, env, args.comfy)

                def fwd_comfy():
                    with torch.no_grad():
                        return cm(x, ts, ctx)
                record("comfy", fwd_comfy, {"attention": f"ComfyUI {attn_name}"})
            except Exception as e:  # noqa: BLE001
                results.append({"case": name, "config": "comfy", "flops": flops,
                                "error": f"ComfyUI import/build failed: {type(e).__name__}: {str(e)[:300]}",
                                "trace": traceback.format_exc()[-2000:]})
                print(f"  comfy        ComfyUI import/build failed: {type(e).__name__}: {e}", flush=True)
            del cm
            env.clear()

        backend = apply_attention(model, "auto", env.device)
        if "ours" in wanted:
            record("ours", fwd_diffusers, {"attention": f"auto: {best} ({backend}), processor "
                                                        f"{installed_kind(model) or 'diffusers'}"})

        sample_ref = None
        if args.sample:
            sample_ref = sample_check(model, var, w, h, env, results, name, label="bf16+" + best)
        can_8bit = not env.dry and lowbit_supported(env.device)
        if "8bit" in wanted and can_8bit:
            apply_attention(model, "8bit", env.device)
            record("8bit", fwd_diffusers, {"attention": f"8bit {DEFAULT_CONFIG.__dict__}"})
            backend = apply_attention(model, "auto", env.device)

        def compiled_config(cfg: str, extra: dict) -> None:
            nonlocal backend
            for attempt, attn in enumerate((best, "sdpa")):
                if attempt and "error" not in results[-1]:
                    break
                if attempt:
                    results[-1]["config"] = cfg + "_failed_" + best
                    uncompile(model)
                    backend = apply_attention(model, attn, env.device)
                compile_blocks(model)
                record(cfg, fwd_diffusers, {**extra, "attention": f"{attn} ({backend})"})
                if env.dry:
                    break
            state["compiled"] = True

        if "compile" in wanted:
            compiled_config("compile", {})
            uncompile(model)
            backend = apply_attention(model, best, env.device)

        if "fp8" in wanted or "fp8_compile" in wanted:
            t = time.perf_counter()
            try:
                emulate = env.dry  # the CPU dry run checks the code path, not the kernel
                names = swap_fp8_linears(model, emulate=emulate, fused_quant=not env.dry)
                state["fp8"] = True
                print(f"  fp8: {len(names)} linears converted in {time.perf_counter() - t:.1f} s", flush=True)
            except Exception as e:  # noqa: BLE001
                results.append({"case": name, "config": "fp8", "flops": flops,
                                "error": f"fp8 conversion failed: {type(e).__name__}: {str(e)[:300]}",
                                "trace": traceback.format_exc()[-2000:]})
                print(f"  fp8          conversion failed: {e}", flush=True)
        if state["fp8"] and "fp8" in wanted:
            record("fp8", fwd_diffusers, {"attention": f"{best} ({backend})",
                                          "quantization": "torch.compile fused" if not env.dry else "emulated"})
        if state["fp8"] and "fp8_compile" in wanted:
            for m in model.modules():
                if isinstance(m, Fp8Linear):
                    m.quantize = quantize_rows  # plain torch: the block compile fuses it
            compiled_config("fp8_compile", {"quantization": "fused in block graph"})

        final_attention = "auto"
        if state["fp8"] and "fp8_8bit_compile" in wanted and can_8bit:
            for attempt, kcfg in enumerate((DEFAULT_CONFIG, replace(DEFAULT_CONFIG, tma=False))):
                if attempt and "error" not in results[-1]:
                    break
                if attempt:
                    results[-1]["config"] = "fp8_8bit_compile_failed_tma"
                uncompile(model)
                apply_attention(model, "auto", env.device)
                install_wan_attention(model, "8bit", env.device, kcfg)
                compile_blocks(model)
                record("fp8_8bit_compile", fwd_diffusers, {"attention": f"8bit {kcfg.__dict__}",
                                                           "quantization": "fused in block graph"})
            final_attention = "8bit"
        if args.sample and sample_ref is not None and (state["fp8"] or state["compiled"]):
            sample_check(model, var, w, h, env, results, name, label="final fast model", ref=sample_ref,
                         attention=final_attention)
    finally:
        del model, x, ctx
        ref.clear()
        uncompile_safe()
        env.clear()


def uncompile_safe() -> None:
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def sample_check(model, var, w, h, env: Env, results: list, case: str, label: str, ref=None, attention: str = "auto"):
    """2-step CFG sample through wanmeter.sampler; returns the latent (CPU) or None."""
    row = {"case": case, "config": f"sample_2step[{label}]"}
    try:
        if BUDGET[0] and elapsed() > BUDGET[0]:
            raise RuntimeError(f"skipped: time budget {BUDGET[0]:.0f} s reached")
        from wanmeter.runtime import RuntimeOptions
        from wanmeter.sampler import SampleRequest, WanModelBundle, sample

        experts = (model, model) if variant(var)["experts"] == 2 else (model,)
        bundle = WanModelBundle(var, experts, runtime=RuntimeOptions(device=str(env.device), attention=attention))
        text_len = TINY["text_len"] if env.dry else 512
        g = torch.Generator().manual_seed(5)
        pos = 0.5 * torch.randn(1, text_len, model.config.text_dim, generator=g)
        neg = 0.5 * torch.randn(1, text_len, model.config.text_dim, generator=g)
        s = int(vae_family(variant(var)["vae"])["stride_s"])
        if env.dry:
            w, h, frames = 6 * s, 4 * s, 9
        else:
            frames = CASES[case][3]
        req = SampleRequest(width=w, height=h, frames=frames, steps=2, seed=0)
        t = time.perf_counter()
        lat = sample(bundle, pos.to(env.dtype), neg.to(env.dtype), req)
        row["seconds"] = time.perf_counter() - t
        row["finite"] = bool(torch.isfinite(lat).all())
        if ref is not None:
            row["cos_vs_bf16_sample"] = cosine(lat, ref)
            row["rel_l2_vs_bf16_sample"] = float((lat - ref).norm() / ref.norm())
        print(f"  {row['config']}: {row['seconds']:.1f} s" + (f", latent cos vs bf16 {row['cos_vs_bf16_sample']:.5f}"
                                                               if ref is not None else ""), flush=True)
        results.append(row)
        return lat
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        row["trace"] = traceback.format_exc()[-2000:]
        results.append(row)
        print(f"  {row['config']}: skipped/failed: {row['error']}", flush=True)
        return None


# ------------------------------------------------------------------ table

def print_table(results: list, peak: float) -> None:
    print(f"\nmatmul peak (8192^3 bf16) {peak / 1e12:.0f} TF/s")
    hdr = f"{'case':13s} {'config':22s} {'sec':>8s} {'TF/s':>6s} {'%peak':>6s} {'VRAM':>6s} {'x diff':>7s} {'x comfy':>7s} {'cos':>8s}"
    print(hdr)
    print("-" * len(hdr))
    base = {}
    for r in results:
        if "seconds" in r and r["config"] in ("diffusers", "comfy"):
            base[(r["case"], r["config"])] = r["seconds"]
    for r in results:
        if r["config"].startswith("sample_2step"):
            continue
        if "error" in r or "seconds" not in r:
            print(f"{r['case']:13s} {r['config']:22s} {'ERROR: ' + r.get('error', '?')[:80]}")
            continue
        sd = base.get((r["case"], "diffusers"))
        sc = base.get((r["case"], "comfy"))
        vr = f"{r['peak_vram_gib']:.1f}" if r.get("peak_vram_gib") is not None else "-"
        print(f"{r['case']:13s} {r['config']:22s} {r['seconds']:8.3f} {r['tflops']:6.0f} {100 * r['frac_matmul_peak']:5.1f}% "
              f"{vr:>6s} {sd / r['seconds'] if sd else float('nan'):7.2f} {sc / r['seconds'] if sc else float('nan'):7.2f} "
              f"{r['cos_vs_diffusers']:8.5f}")
    for r in results:
        if r["config"].startswith("sample_2step"):
            extra = r.get("error") or (f"{r['seconds']:.1f} s" + (f", latent cos {r['cos_vs_bf16_sample']:.5f}, rel L2 "
                                       f"{r['rel_l2_vs_bf16_sample']:.4f}" if "cos_vs_bf16_sample" in r else ""))
            print(f"{r['case']:13s} {r['config']:22s} {extra}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="ti2v_5b_720p,a14b_480p", help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--comfy", default=os.environ.get("WANMETER_COMFYUI", ""), help="ComfyUI checkout path")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sample", dest="sample", action="store_true", default=True)
    ap.add_argument("--no-sample", dest="sample", action="store_false")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which no new config starts (0: none)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check every code path")
    args = ap.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES] + [c for c in args.configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown case/config {bad}")
    env = Env(args.dry_run)
    BUDGET[0] = args.budget
    if env.dry:
        args.reps = 1
    print(f"device {env.name} capability {env.capability} torch {torch.__version__}", flush=True)
    try:
        import diffusers
        print(f"diffusers {diffusers.__version__}", flush=True)
    except ImportError as e:
        print(f"diffusers missing: {e}")
        return 2
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "dryrun" if env.dry else env.name.replace(" ", "_").replace("/", "_")
    out_path = out_dir / f"speed_{tag}_{'_'.join(cases)}.json"
    results: list = []
    peak = matmul_peak(env)
    print(f"matmul peak {peak / 1e12:.1f} TF/s", flush=True)
    meta = {"device": env.name, "capability": env.capability, "torch": torch.__version__, "matmul_peak_flops": peak,
            "argv": sys.argv[1:], "reps": args.reps}

    def save():
        out_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))

    for c in cases:
        try:
            run_case(c, args, env, peak, results, save)
        except Exception as e:  # noqa: BLE001
            results.append({"case": c, "config": "case", "error": f"{type(e).__name__}: {e}",
                            "trace": traceback.format_exc()[-2000:]})
            print(f"case {c} failed: {e}", flush=True)
        save()
    meta["total_s"] = elapsed()
    save()
    print_table(results, peak)
    print(f"\nraw JSON: {out_path}  (total {elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
