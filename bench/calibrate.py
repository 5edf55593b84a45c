"""Re-measure the estimator's calibration constants on this GPU and write a calibration JSON.

Run on a GPU machine (torch 2.11 + CUDA, diffusers, transformers):
    python bench/calibrate.py                 # writes $OUT (or bench/results)/calibration_<gpu>.json
    WANMETER_CALIBRATION=that.json python -m wanmeter.estimator estimate ...
    python bench/calibrate.py --dry-run       # CPU, tiny sizes: checks the script end to end

Measures (random weights built directly on the GPU, bf16): matmul peak and the DiT's linear
shapes, attention kernels (SDPA flash / efficient / cuDNN, SageAttention if installed), full
forwards of diffusers' WanTransformer3DModel (TI2V-5B 720p and A14B 480p, as in performance.md),
fp8 layerwise-cast storage, block-level group offload, VAE decodes (Wan2.1 two sizes, Wan2.2
one; full and tiled), the umt5-xxl encoder, and the CUDA context. Each derived constant is
written with the formula that produced it as its source. Target: < 8 minutes on one H100.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from wanmeter.estimator.calibration import DATA as CAL_DATA  # noqa: E402
from wanmeter.estimator.flops import DiTShape, block_params, dit_params, forward_flops  # noqa: E402
from wanmeter.estimator.gpus import detect_gpu_name, load_gpus  # noqa: E402
from wanmeter.variants import variant, vae_family  # noqa: E402

GIB = 1024 ** 3
TINY = {"dim": 256, "ffn_dim": 512, "num_layers": 2, "text_dim": 64, "heads": 2}


# ---------------------------------------------------------------- shared helpers (accuracy.py uses them)

class Env:
    """Device, dtype and size mode of a run (full-size on CUDA, tiny on CPU for --dry-run)."""

    def __init__(self, dry_run: bool):
        self.dry = dry_run or not torch.cuda.is_available()
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.dtype = torch.float32 if self.dry else torch.bfloat16
        self.gpu_name = "cpu" if self.dry else torch.cuda.get_device_name()
        self.gpus = load_gpus()
        self.gpu_key = None if self.dry else detect_gpu_name(self.gpu_name, self.gpus)

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        gc.collect()
        if not self.dry:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> float:
        return float(torch.cuda.max_memory_allocated()) if not self.dry else 0.0

    def allocated(self) -> float:
        return float(torch.cuda.memory_allocated()) if not self.dry else 0.0


def timed(env: Env, fn, reps: int = 2, warmup: int = 1) -> float:
    """Median wall seconds of fn() after warm-up (CUDA-synchronized); one bare call in --dry-run."""
    if env.dry:
        reps, warmup = 1, 0
    for _ in range(warmup):
        fn()
    env.sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        env.sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def dit_kwargs(variant_name: str, env: Env) -> dict:
    v = variant(variant_name)
    if env.dry:
        d, f, layers, text_dim, heads = TINY["dim"], TINY["ffn_dim"], TINY["num_layers"], TINY["text_dim"], TINY["heads"]
    else:
        d, f, layers, text_dim, heads = v["dim"], v["ffn_dim"], v["num_layers"], 4096, v["num_heads"]
    return dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=d // heads,
                in_channels=v["in_channels"], out_channels=v["out_channels"], text_dim=text_dim, freq_dim=256,
                ffn_dim=f, num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                rope_max_seq_len=1024)


def shape_of(kw: dict) -> DiTShape:
    return DiTShape(dim=kw["num_attention_heads"] * kw["attention_head_dim"], ffn_dim=kw["ffn_dim"],
                    num_layers=kw["num_layers"], in_channels=kw["in_channels"], out_channels=kw["out_channels"],
                    text_dim=kw["text_dim"])


def build_dit(kw: dict, env: Env):
    """diffusers WanTransformer3DModel with random weights, created directly on the device."""
    from diffusers import WanTransformer3DModel

    old = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            m = WanTransformer3DModel(**kw)
    finally:
        torch.set_default_dtype(old)
    return m.to(env.dtype).eval().requires_grad_(False)


def latent_geometry(variant_name: str, width: int, height: int, frames: int, env: Env) -> tuple[int, int, int]:
    s = int(vae_family(variant(variant_name)["vae"])["stride_s"])
    lf = (frames - 1) // 4 + 1
    if env.dry:  # tiny: keep the token count small
        return max(1, min(lf, 3)), 4, 6
    return lf, height // s, width // s


def dit_inputs(kw: dict, geo: tuple[int, int, int], env: Env, batch: int = 1, per_token_t: bool = False):
    lf, h, w = geo
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, kw["in_channels"], lf, h, w, generator=g).to(env.device, env.dtype)
    ctx = torch.randn(batch, 512 if not env.dry else 16, kw["text_dim"], generator=g).to(env.device, env.dtype)
    n = lf * (h // 2) * (w // 2)
    t = torch.full((batch, n), 500.0, device=env.device) if per_token_t else torch.full((batch,), 500.0, device=env.device)
    return x, t, ctx, n


def forward_fn(model, inputs):
    x, t, ctx, _ = inputs

    def run():
        with torch.no_grad():
            model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)
    return run


def free(*objs) -> None:
    for o in objs:
        del o
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- measurements

def measure_matmul(env: Env) -> dict:
    n = 256 if env.dry else 8192
    a = torch.randn(n, n, device=env.device, dtype=env.dtype)
    b = torch.randn(n, n, device=env.device, dtype=env.dtype)
    s = timed(env, lambda: a @ b, reps=5, warmup=3)
    out = {"square": {"n": n, "tflops": 2 * n ** 3 / s / 1e12}}
    v = variant("t2v_a14b")
    tokens = 512 if env.dry else 75600
    d, f = (TINY["dim"], TINY["ffn_dim"]) if env.dry else (v["dim"], v["ffn_dim"])
    x = torch.randn(tokens, d, device=env.device, dtype=env.dtype)
    lins = [torch.nn.Linear(d, d, device=env.device, dtype=env.dtype), torch.nn.Linear(d, f, device=env.device, dtype=env.dtype)]
    flop = 2 * tokens * d * (d + f)
    s = timed(env, lambda: [lin(x) for lin in lins], reps=3, warmup=2)
    out["dit_linears"] = {"tokens": tokens, "tflops": flop / s / 1e12}
    free(a, b, x)
    return out


def measure_attention(env: Env) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, hd = (2, 128) if env.dry else (40, 128)
    tokens = 256 if env.dry else 32760
    q, k, v = (torch.randn(1, heads, tokens, hd, device=env.device, dtype=env.dtype) for _ in range(3))
    flop = 4 * tokens * tokens * hd * heads
    out = {"tokens": tokens}
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    for name, b in backends.items():
        try:
            with sdpa_kernel(b):
                s = timed(env, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), reps=3, warmup=1)
            out[name] = flop / s / 1e12
        except RuntimeError as e:
            out[name] = None
            out[name + "_error"] = str(e).splitlines()[0][:200]
    try:
        from sageattention import sageattn

        s = timed(env, lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False), reps=3, warmup=1)
        out["sage"] = flop / s / 1e12
    except Exception as e:  # not installed, or no GPU
        out["sage"] = None
        out["sage_error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    free(q, k, v)
    return out


FORWARD_CASES = [("ti2v_5b", 1280, 704, 121), ("t2v_a14b", 832, 480, 81)]


def measure_forwards(env: Env, fast_extra: bool = True) -> list[dict]:
    """Full-size forwards (the calibration points), plus fp8 storage and group offload on the 5B."""
    rows = []
    for var, w, h, f in FORWARD_CASES:
        kw = dit_kwargs(var, env)
        env.reset_peak()
        model = build_dit(kw, env)
        weights = env.allocated()
        inputs = dit_inputs(kw, latent_geometry(var, w, h, f, env), env, per_token_t=var == "ti2v_5b")
        env.reset_peak()
        s = timed(env, forward_fn(model, inputs))
        rows.append({"case": f"{var} {w}x{h}x{f}", "variant": var, "mode": "bf16", "tokens": inputs[3],
                     "seconds": s, "peak_bytes": env.peak(), "weight_bytes": weights, "shape": shape_of(kw).__dict__})
        if var == "ti2v_5b" and fast_extra:
            try:
                model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=env.dtype)
                env.reset_peak()
                s8 = timed(env, forward_fn(model, inputs))
                rows.append({"case": f"{var} {w}x{h}x{f}", "variant": var, "mode": "fp8_storage", "tokens": inputs[3],
                             "seconds": s8, "peak_bytes": env.peak(), "shape": shape_of(kw).__dict__})
            except Exception as e:
                rows.append({"case": f"{var} fp8_storage", "error": f"{type(e).__name__}: {e}"[:300]})
            free(model)
            model = build_dit(kw, env)
            if not env.dry:
                try:
                    model.to("cpu")
                    model.enable_group_offload(onload_device=env.device, offload_device=torch.device("cpu"),
                                               offload_type="block_level", num_blocks_per_group=1, use_stream=True)
                    env.reset_peak()
                    sg = timed(env, forward_fn(model, inputs))
                    rows.append({"case": f"{var} {w}x{h}x{f}", "variant": var, "mode": "group_offload_all",
                                 "tokens": inputs[3], "seconds": sg, "peak_bytes": env.peak(),
                                 "shape": shape_of(kw).__dict__})
                except Exception as e:
                    rows.append({"case": f"{var} group_offload", "error": f"{type(e).__name__}: {e}"[:300]})
        free(model, inputs)
    return rows


def vae_kwargs(family: str, env: Env) -> dict:
    fam = vae_family(family)
    base = 16 if env.dry else int(fam["base_dim"])
    kw = dict(base_dim=base, z_dim=int(fam["z_dim"]), dim_mult=[1, 2, 4, 4], num_res_blocks=2 if not env.dry else 1,
              attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    if family == "wan22":
        kw.update(decoder_base_dim=24 if env.dry else 256, is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16)
    return kw


VAE_CASES = [("wan21", 832, 480, 81), ("wan21", 1280, 720, 81), ("wan22", 1280, 704, 121)]


def measure_vae(env: Env, cases=VAE_CASES) -> list[dict]:
    from diffusers import AutoencoderKLWan

    rows = []
    if env.dry:  # one size per family is enough to exercise the code
        cases = [c for i, c in enumerate(cases) if c[0] not in {d[0] for d in cases[:i]}]
    for family in sorted({c[0] for c in cases}):
        with torch.device(env.device):
            vae = AutoencoderKLWan(**vae_kwargs(family, env)).to(env.dtype).eval().requires_grad_(False)
        s = int(vae_family(family)["stride_s"])
        for fam, w, h, f in cases:
            if fam != family:
                continue
            lf = (f - 1) // 4 + 1
            hh, ww = (h // s, w // s) if not env.dry else (4, 4)
            lf = lf if not env.dry else 2
            z = torch.randn(1, int(vae_family(family)["z_dim"]), lf, hh, ww, device=env.device, dtype=env.dtype)
            for tiled in (False, True):
                if tiled:
                    vae.enable_tiling()
                else:
                    vae.disable_tiling()
                env.reset_peak()
                with torch.no_grad():
                    sec = timed(env, lambda: vae.decode(z, return_dict=False), reps=1, warmup=0 if not env.dry else 0)
                rows.append({"family": family, "width": w, "height": h, "frames": f, "tiled": tiled,
                             "seconds": sec, "peak_bytes": env.peak()})
            free(z)
        free(vae)
    return rows


def measure_text_encoder(env: Env) -> dict:
    from transformers import UMT5Config, UMT5EncoderModel

    if env.dry:
        cfg = UMT5Config(vocab_size=1000, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                         feed_forward_proj="gated-gelu")
        tokens = 16
    else:
        cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                         feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
        tokens = 512
    env.reset_peak()
    old = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            m = UMT5EncoderModel(cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(old)
    weights = env.allocated()
    ids = torch.randint(0, cfg.vocab_size, (2, tokens), device=env.device)
    env.reset_peak()
    with torch.no_grad():
        s = timed(env, lambda: m(input_ids=ids), reps=3, warmup=1)
    params = sum(p.numel() for p in m.parameters())
    out = {"seconds": s, "peak_bytes": env.peak(), "weight_bytes": weights, "tokens": 2 * tokens, "params": params,
           "embedding_params": m.shared.weight.numel()}
    free(m, ids)
    return out


def cuda_context_bytes(env: Env) -> float:
    if env.dry:
        return 0.0
    free_b, total = torch.cuda.mem_get_info()
    return float(total - free_b - torch.cuda.memory_reserved())


# ---------------------------------------------------------------- derive constants

def _set(cal: dict, path: str, value, source: str) -> None:
    cur = cal
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = {"value": value, "source": source}


def derive(meas: dict, env: Env, base: dict) -> dict:
    """A calibration dict: the bundled one with every re-measured value replaced."""
    cal = copy.deepcopy(base)
    tag = f"bench/calibrate.py on {env.gpu_name}, {meas['date']}"
    gpu = env.gpus.get(env.gpu_key) if env.gpu_key else None
    arch = gpu.arch if gpu else "hopper"
    bw = (gpu.mem_bw_gbps if gpu else 1000.0) * 1e9
    mm = meas["matmul"]["square"]["tflops"] * 1e12
    cal["reference_gpu"] = {"value": env.gpu_key or env.gpu_name, "source": tag}
    _set(cal, "reference_matmul_tflops", round(mm / 1e12, 1), f"measured: {meas['matmul']['square']['n']}^2 bf16 matmul, {tag}")
    _set(cal, "matmul.in_model_fraction_of_achieved", round(min(1.0, meas["matmul"]["dit_linears"]["tflops"] * 1e12 / mm), 3),
         f"measured: DiT linear shapes at {meas['matmul']['dit_linears']['tokens']} tokens / square matmul, {tag}")
    att = meas["attention"]
    for b in ("flash", "efficient", "cudnn", "sage"):
        if att.get(b):
            _set(cal, f"attention_fraction_of_matmul.{arch}.{b}", round(att[b] * 1e12 / mm, 3),
                 f"measured: {b} {att[b]:.0f} TF/s at {att['tokens']} tokens / matmul {mm / 1e12:.0f}, {tag}")
    auto = cal["sdpa_auto_backend"]["value"]
    r_att = (att.get(auto.get(arch, "flash")) or att.get("flash") or mm / 1e12 * 0.5) * 1e12
    r_lin = min(mm, meas["matmul"]["dit_linears"]["tflops"] * 1e12)
    elem, act = [], []
    for row in meas["forwards"]:
        if row.get("mode") != "bf16":
            continue
        sh = DiTShape(**row["shape"])
        fl = forward_flops(sh, row["tokens"], text_tokens=512 if not env.dry else 16,
                           per_token_timestep=row["variant"] == "ti2v_5b")
        rest = row["seconds"] - fl.linear / r_lin - fl.attention / r_att
        elem.append(max(0.0, rest) * bw / (sh.num_layers * row["tokens"] * sh.dim))
        if row["variant"] != "ti2v_5b":
            act.append((row["peak_bytes"] - row["weight_bytes"]) / (row["tokens"] * sh.dim))
    if elem:
        _set(cal, "elementwise_bytes_per_token_channel_block", round(statistics.mean(elem), 1),
             f"fit: (forward - linear/rate - attention/rate) x BW / (L N d) over {len(elem)} forwards, {tag}")
    if act and act[0] > 0:
        _set(cal, "activations.bytes_per_token_channel", round(statistics.mean(act), 2),
             f"fit: (peak - weights) / (N d), A14B forward, {tag}")
    five = {r["mode"]: r for r in meas["forwards"] if r.get("variant") == "ti2v_5b" and "mode" in r}
    if "bf16" in five:
        b = five["bf16"]
        sh = DiTShape(**b["shape"])
        n, d = b["tokens"], sh.dim
        rest = b["peak_bytes"] - b["weight_bytes"] - n * d * cal["activations"]["bytes_per_token_channel"]["value"]
        if rest > 0:
            _set(cal, "activations.modulation_bytes_per_token", round(rest / (n * 6 * d), 2),
                 f"fit: TI2V-5B peak - weights - activations, per (N x 6d), {tag}")
        p = dit_params(sh)
        if "fp8_storage" in five:
            extra = five["fp8_storage"]["seconds"] - b["seconds"]
            _set(cal, "fp8.cast_bytes_per_weight", round(max(0.0, extra) * bw / p, 1),
                 f"fit: fp8 layerwise storage forward - bf16 forward, x BW / weights, {tag}")
        if "group_offload_all" in five:
            go = five["group_offload_all"]
            _set(cal, "streaming.overhead_s_per_block", round(max(0.0, go["seconds"] - b["seconds"]) / sh.num_layers, 5),
                 f"fit: (all-blocks group offload - resident) / blocks, TI2V-5B, {tag}")
            bb = block_params(sh) * 2.0
            nonblock = (p - sh.num_layers * block_params(sh)) * 2.0
            act5 = b["peak_bytes"] - b["weight_bytes"]
            _set(cal, "streaming.buffer_blocks", max(1, round((go["peak_bytes"] - act5 - nonblock) / bb)),
                 f"fit: (offload peak - activations - non-block weights) / block bytes, {tag}")
    vae = meas["vae"]
    for fam in ("wan21", "wan22"):
        for tiled in (False, True):
            pts = [r for r in vae if r["family"] == fam and r["tiled"] == tiled]
            if not pts:
                continue
            wbytes = vae_family(fam)["params"] * 2.0
            out_b = cal["vae"]["output_bytes_per_pixel_frame"]["value"]
            key = "tiled" if tiled else "full"
            per_px = [max(0.0, r["peak_bytes"] - wbytes - out_b * r["width"] * r["height"] * r["frames"]) / (r["width"] * r["height"]) for r in pts]
            ns = [r["seconds"] / (r["width"] * r["height"] * r["frames"]) * 1e9 for r in pts]
            if len(pts) >= 2:
                x = [r["width"] * r["height"] * r["frames"] for r in pts]
                k = (pts[-1]["seconds"] - pts[0]["seconds"]) / max(1.0, x[-1] - x[0])
                fixed = max(0.0, pts[0]["seconds"] - k * x[0])
                ns_v, fixed_v = k * 1e9, fixed
            else:
                ns_v, fixed_v = statistics.mean(ns), 0.0
            cal["vae"][fam][key] = {"per_pixel_bytes": round(statistics.mean(per_px)), "fixed_gib": 0.0,
                                    "fixed_s": round(fixed_v, 3), "ns_per_pixel_frame": round(ns_v, 2),
                                    "source": f"fit to {len(pts)} measured decode(s), {tag}"}
    te = meas["text_encoder"]
    _set(cal, "text_encoder.params", float(te["params"]), f"counted: UMT5EncoderModel parameters, {tag}")
    _set(cal, "text_encoder.embedding_params", float(te["embedding_params"]), f"counted, {tag}")
    _set(cal, "text_encoder.activation_bytes_per_token", round(max(0.0, te["peak_bytes"] - te["weight_bytes"]) / te["tokens"]),
         f"fit: (peak - weights) / tokens, {tag}")
    te_flops = 2.0 * (te["params"] - te["embedding_params"]) * te["tokens"]
    _set(cal, "text_encoder.gpu_fraction_of_matmul", round(min(1.0, te_flops / te["seconds"] / mm), 3),
         f"fit: encoder FLOPs / seconds / matmul rate, {tag}")
    if meas.get("cuda_context_bytes"):
        _set(cal, "overhead.cuda_context_gib", round(meas["cuda_context_bytes"] / GIB, 2),
             f"measured: device used - torch reserved, {tag}")
    cal["_about"] = f"Written by bench/calibrate.py on {env.gpu_name} ({meas['date']}); fields not re-measured keep the bundled values and sources."
    return cal


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: exercise the script only")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    env = Env(args.dry_run)
    t0 = time.time()
    meas = {"gpu": env.gpu_name, "gpu_key": env.gpu_key, "date": _dt.date.today().isoformat(), "dry_run": env.dry,
            "torch": torch.__version__}
    steps = [("matmul", measure_matmul), ("attention", measure_attention), ("forwards", measure_forwards),
             ("vae", measure_vae), ("text_encoder", measure_text_encoder)]
    for name, fn in steps:
        t = time.time()
        meas[name] = fn(env)
        print(f"[calibrate] {name}: {time.time() - t:.1f} s", flush=True)
    meas["cuda_context_bytes"] = cuda_context_bytes(env)
    with open(CAL_DATA, encoding="utf-8") as f:
        base = json.load(f)
    cal = derive(meas, env, base)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "dryrun" if env.dry else (env.gpu_key or "gpu")
    (out / f"calibration_{tag}.json").write_text(json.dumps(cal, indent=1), encoding="utf-8")
    (out / f"calibrate_measurements_{tag}.json").write_text(json.dumps(meas, indent=1, default=str), encoding="utf-8")
    if not env.dry and env.gpu_key:
        user = {"gpus": {env.gpu_key: {"achieved_bf16_tflops": round(meas["matmul"]["square"]["tflops"], 1)}}}
        (out / f"gpus_measured_{tag}.json").write_text(json.dumps(user, indent=1), encoding="utf-8")
    print(f"[calibrate] wrote {out}/calibration_{tag}.json in {time.time() - t0:.0f} s")
    print(json.dumps({"matmul_tflops": meas["matmul"]["square"]["tflops"],
                      "attention_tflops": {k: v for k, v in meas["attention"].items() if not k.endswith("error")},
                      "forwards": [(r.get("case"), r.get("mode"), r.get("seconds"), r.get("peak_bytes", 0) / GIB)
                                   for r in meas["forwards"]]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
