#!/usr/bin/env python3
"""A whole T2V-A14B video (1280x720x81, CFG), WanMeter's pipeline vs ComfyUI native, full-size random weights.

    python3 bench/whole_video.py --comfy /path/to/ComfyUI          # GPU, ~8 min on an H200
    python3 bench/whole_video.py --comfy /path/to/ComfyUI --dry-run  # CPU, tiny sizes: every code path

A 40-step 720p video takes longer than one 10-minute device call per configuration, so each
configuration runs a SHORT end-to-end pass: 3 sampler steps with CFG (shift 12, boundary 0.875:
steps 1-2 on the high-noise expert, step 3 on the low-noise one, so the pass contains the expert
swap), and the 40-step figure is COMPOSED from the measured parts:

    text encode + first high step + (n_high - 1) x steady step + swap + first low step
                + (n_low - 1) x steady step + decode

steady step = the pass's step 2 (high expert, already compiled / converted); the low expert is the
same architecture, so its later steps are taken at that steady time (stated, not measured);
n_high/n_low = 40-step split of the workload (wanmeter.estimator, shift 12: 26 high + 14 low).

Configurations (same weights, same inputs, one process):
  comfy_default  ComfyUI 0.3.64's WanModel (bf16, disable_weight_init ops, its attention), one CFG
                 step = one forward on the batched cond+uncond pair (as its sampler batches them);
                 its swap replayed with the primitive its model manager uses (nn.Module.to of the
                 whole model from/to pageable CPU memory), its Wan2.1 VAE decode (bf16, as it picks on
                 Hopper) and the copy of the frames to CPU.
  comfy_fast     the same with weight_dtype fp8_e4m3fn_fast (comfy.ops.fp8_ops: fp8 weights, fp8
                 matmuls via torch._scaled_mm) and torch.compile of the whole diffusion model as its
                 TorchCompileModel node does (backend inductor, compiled per model).
  ours_default   WanMeter's pipeline (WanPipeline: text -> sample -> decode) with
                 RuntimeOptions(offload="model", pinned_swap=True), attention auto.
  ours_fast      the same + fp8 compute, 8-bit attention, regional compile.
Text encoding: a full-size random umt5-xxl encoder (transformers UMT5EncoderModel, 2 prompts x 512
tokens) for ours; ComfyUI's own umt5 is not run: its text time is taken as ours (stated).
The estimator's predictions (wanmeter.estimator.estimate) for ours are printed next to them, and for
comfy_default a PROXY (the stock-processor path with pageable model offload; no native-ComfyUI model
here). `--recompose FILE` re-prints a saved run with today's composition and estimator (no GPU).
Writes $OUT/whole_video.json (or bench/results/).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from wanmeter.variants import vae_family, variant  # noqa: E402

VAR, W, H, F = "t2v_a14b", 1280, 720, 81
SHIFT, STEPS_FULL, PASS_STEPS = 12.0, 40, 3
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Env:
    def __init__(self, dry: bool):
        self.dry = dry or not torch.cuda.is_available()
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.dtype = torch.float32 if self.dry else torch.bfloat16
        self.size = "tiny" if self.dry else "full"

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if not self.dry:
            torch.cuda.empty_cache()

    def peak_gib(self) -> float | None:
        return None if self.dry else torch.cuda.max_memory_allocated() / 2 ** 30

    def reset_peak(self) -> None:
        if not self.dry:
            torch.cuda.reset_peak_memory_stats()

    def timed(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t


def geometry(env: Env) -> tuple[int, int, int, int, int]:
    """(width, height, frames, latent frames, latent h, latent w) of the pass."""
    if env.dry:
        return 64, 64, 5, 2, 8, 8
    s = int(vae_family(variant(VAR)["vae"])["stride_s"])
    return W, H, F, (F - 1) // 4 + 1, H // s, W // s


# ---------------------------------------------------------------- shared parts

def build_text_encoder(env: Env):
    from transformers import UMT5Config, UMT5EncoderModel

    if env.dry:
        cfg = UMT5Config(vocab_size=1000, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                         feed_forward_proj="gated-gelu")
    else:
        cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                         feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
    old = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            m = UMT5EncoderModel(cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(old)
    return m


class RandomTextEncoder:
    """The WanTextEncoder interface (encode(prompts) -> [B, 512, d]) over a random umt5: every prompt
    is taken as the full 512 tokens (the estimator's assumption; real prompts are shorter)."""

    def __init__(self, model, env: Env, text_dim: int):
        self.model, self.env, self.text_dim = model, env, text_dim
        self.seconds = 0.0

    def encode(self, prompts):
        n = 16 if self.env.dry else 512
        g = torch.Generator().manual_seed(len(prompts))
        ids = torch.randint(0, self.model.config.vocab_size, (len(prompts), n), generator=g).to(self.env.device)
        with torch.no_grad():
            out, s = self.env.timed(lambda: self.model(input_ids=ids).last_hidden_state)
        self.seconds += s
        if out.shape[-1] != self.text_dim:  # tiny dry-run encoder: match the DiT's text_dim
            out = out[..., :1].expand(*out.shape[:-1], self.text_dim).contiguous()
        return out.to(self.env.dtype)


def build_our_vae(env: Env):
    from diffusers import AutoencoderKLWan

    from calibrate import vae_kwargs
    from wanmeter.loader.vae_loader import WanVAE

    class _E:  # calibrate.vae_kwargs wants its Env's dry flag
        dry = env.dry

    with torch.device(env.device):
        m = AutoencoderKLWan(**vae_kwargs("wan21", _E)).to(env.dtype).eval().requires_grad_(False)
    return WanVAE(m, "wan21", env.dtype, env.device)


def build_comfy(dmodel, env: Env, comfy_path: str, fp8: bool):
    """ComfyUI's WanModel holding the diffusers expert's weights (bf16: the same tensors; fp8: cast copies)."""
    from speed import import_comfy
    from wanmeter.loader.dit_keys import official_to_diffusers

    wan_model, ops, attn_name = import_comfy(comfy_path, env)
    c = dmodel.config
    d = c.num_attention_heads * c.attention_head_dim
    wdtype = torch.float8_e4m3fn if fp8 else env.dtype
    cm = wan_model.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=c.in_channels, dim=d,
                            ffn_dim=c.ffn_dim, freq_dim=256, text_dim=c.text_dim, out_dim=c.out_channels,
                            num_heads=c.num_attention_heads, num_layers=c.num_layers, qk_norm=True,
                            cross_attn_norm=True, eps=1e-6, device="meta", dtype=wdtype,
                            operations=ops.fp8_ops if fp8 else ops.disable_weight_init)
    meta = dict(cm.state_dict())
    names = official_to_diffusers(list(meta))
    dsd = dmodel.state_dict()
    sd = {}
    for dk, ok in names.items():
        want = meta[ok].dtype
        if ok.startswith("patch_embedding."):
            want = torch.float32  # ComfyUI runs the patch conv in fp32
        sd[ok] = dsd[dk] if dsd[dk].dtype == want else dsd[dk].to(want)
    cm.load_state_dict(sd, strict=True, assign=True)
    return cm.eval().requires_grad_(False), attn_name


def build_comfy_vae(env: Env, comfy_path: str):
    from speed import import_comfy

    import_comfy(comfy_path, env)
    import comfy.ldm.wan.vae as cvae

    dim = 16 if env.dry else 96
    with torch.device(env.device):
        v = cvae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2 if not env.dry else 1,
                        attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    g = torch.Generator(device=env.device).manual_seed(7)
    with torch.no_grad():
        for p in v.parameters():  # ComfyUI's ops leave weights uninitialized: never time on garbage or zeros
            p.copy_(torch.randn(p.shape, generator=g, device=env.device) * 0.02 + (1.0 if p.ndim == 1 else 0.0))
    return v.to(env.dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------- ComfyUI native

def run_comfy(experts, env: Env, args, fp8: bool, res: dict) -> dict:
    w, h, f, lf, lh, lw = geometry(env)
    row: dict = {"config": "comfy_fast" if fp8 else "comfy_default",
                 "weights": "fp8_e4m3fn_fast" if fp8 else "bf16", "compile": fp8}
    models = []
    t = time.perf_counter()
    for e in experts:
        cm, attn = build_comfy(e, env, args.comfy, fp8)
        models.append(cm)
    row["attention"] = attn
    row["build_s"] = time.perf_counter() - t
    # both wait in pageable CPU memory (where ComfyUI's loader leaves them); the high one is loaded first
    _, row["park_s"] = env.timed(lambda: [m.to("cpu") for m in models])
    env.free()
    _, row["first_load_s"] = env.timed(lambda: models[0].to(env.device))
    callables = list(models)
    if fp8:
        callables = [torch.compile(m, backend="inductor") for m in models]  # TorchCompileModel, one per model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, lf, lh, lw, generator=g).to(env.device, env.dtype)
    ctx = (0.5 * torch.randn(2, 512 if not env.dry else 16, experts[0].config.text_dim, generator=g)).to(env.device, env.dtype)
    ts = torch.tensor([999.0, 999.0], device=env.device)
    steps = []
    env.reset_peak()

    def step(i):
        with torch.no_grad():
            return callables[i](x, ts, ctx)

    for i in (0, 0):
        _, s = env.timed(lambda: step(i))
        steps.append(s)
        log(f"{row['config']}: high step {len(steps)} {s:.2f} s")

    def swap():
        models[0].to("cpu")
        env.free()
        models[1].to(env.device)
    _, row["swap_s"] = env.timed(swap)
    log(f"{row['config']}: swap {row['swap_s']:.2f} s")
    out, s = env.timed(lambda: step(1))
    steps.append(s)
    row["finite"] = bool(torch.isfinite(out.float()).all())
    row["step_s"] = steps
    row["peak_gib_sampling"] = env.peak_gib()
    del out, x, ctx, callables
    models.clear()
    env.free()
    if not fp8 or "comfy_decode_s" not in res:
        vae = build_comfy_vae(env, args.comfy)
        z = torch.randn(1, 16, lf, lh, lw, generator=g).to(env.device, env.dtype)
        env.reset_peak()

        def decode():
            with torch.no_grad():
                return vae.decode(z).clamp(-1.0, 1.0).float().cpu()
        frames, row["decode_s"] = env.timed(decode)
        row["decode_peak_gib"] = env.peak_gib()
        row["frames_shape"] = list(frames.shape)
        res["comfy_decode_s"] = row["decode_s"]
        del vae, z, frames
    else:
        row["decode_s"] = res["comfy_decode_s"]  # same VAE, same precision: measured once
    if fp8:
        torch._dynamo.reset()
    env.free()
    return row


# ---------------------------------------------------------------- ours

def run_ours(bundle, te, vae, env: Env, fast: bool) -> dict:
    from wanmeter.pipeline import WanPipeline
    from wanmeter.runtime import RuntimeOptions
    from wanmeter.sampler import SampleRequest

    opts = RuntimeOptions(device=str(env.device), offload="model", pinned_swap=True,
                          attention="8bit" if fast and not env.dry else "auto",
                          fp8_compute=fast and not env.dry, compile=fast)
    row: dict = {"config": "ours_fast" if fast else "ours_default", "runtime": opts.__dict__.copy()}
    t = time.perf_counter()
    bundle.set_runtime(opts)
    p = bundle.placement
    env.sync()
    row["placement_s"] = time.perf_counter() - t
    row["pin_s_placement"] = p.pin_seconds
    w, h, f, *_ = geometry(env)
    req = SampleRequest(width=w, height=h, frames=f, steps=PASS_STEPS, shift=SHIFT, seed=0)
    acts: list[tuple[int, float]] = []   # (expert, seconds) of each activation that moved weights
    orig = p.activate

    def activate(i):
        s0 = p.swap_seconds
        m = orig(i)
        if p.swap_seconds != s0:
            acts.append((i, p.swap_seconds - s0))
        return m
    p.activate = activate
    te.seconds = 0.0
    env.reset_peak()
    pin0 = p.pin_seconds
    try:
        result = WanPipeline(bundle, te, vae)("a random prompt", req, negative_prompt="")
    finally:
        p.activate = orig
    st = result.sample_stats
    stages = {r.name: r.seconds for r in result.stages}
    row["text_encode_s"] = te.seconds
    row["stages_s"] = stages
    row["stage_peak_gib"] = {r.name: r.peak_bytes / 2 ** 30 for r in result.stages}
    row["decode_s"] = stages.get("decode")
    row["step_s"] = list(st.step_seconds)
    row["expert_per_step"] = list(st.expert_per_step)
    row["activations"] = acts                # first: high expert in (and fast paths); second: the swap
    row["first_load_s"] = acts[0][1] if acts else 0.0
    row["swap_s"] = acts[1][1] if len(acts) > 1 else 0.0
    row["pin_s_during_run"] = p.pin_seconds - pin0   # fast paths changed tensors: copied out once
    row["finite"] = bool(torch.isfinite(result.latent).all())
    del result
    env.free()
    return row


# ---------------------------------------------------------------- composition + estimator

def compose(row: dict, n_high: int, n_low: int, text_s: float) -> dict:
    """40-step seconds of one video from the pass's parts (see the module doc).

    per video (a warm session): text + first expert in + n_high x steady + swap + n_low x steady + decode;
    first video: + compilation (first high step - steady) + pinning (ours, at placement).
    Ours: the sampler times activation inside the step (step 1 holds the first activation, step 3 the
    swap), so they are taken from the recorded activations; ComfyUI's are timed apart."""
    s = row["step_s"]
    steady = s[1]
    ours = row["config"].startswith("ours")
    compile_s = s[0] - steady - (row["first_load_s"] if ours else 0.0)
    low_extra = s[2] - steady - (row["swap_s"] if ours else 0.0)
    per_video = text_s + row["first_load_s"] + n_high * steady + row["swap_s"] + n_low * steady + row["decode_s"]
    pin = row.get("pin_s_placement", 0.0) if ours else 0.0
    return {"steady_step_s": steady, "load_s": row["first_load_s"], "swap_s": row["swap_s"],
            "first_step_compile_s": compile_s, "low_first_step_extra_s": low_extra, "pin_s": pin,
            "text_s": text_s, "decode_s": row["decode_s"], "per_video_40_s": per_video,
            "first_video_40_s": per_video + max(compile_s, 0.0) + pin, "composed": True}


def print_table(res: dict) -> None:
    n_high, n_low = res["full_steps"]["high"], res["full_steps"]["low"]
    print(f"\n{res['workload']}, {n_high}+{n_low} steps with CFG, on {res['device']} ({res['date']}); "
          "40-step figures COMPOSED from a 3-step end-to-end pass")
    hdr = (f"{'config':14s} {'s/step':>7s} {'load':>6s} {'swap':>6s} {'compile':>8s} {'pin':>6s} {'decode':>7s} "
           f"{'text':>5s} {'video s':>8s} {'x comfy':>8s} {'est':>7s} {'err%':>6s} {'1st video':>9s} {'est':>7s} {'err%':>6s}")
    print(hdr)
    base = next((r["composed"]["per_video_40_s"] for r in res["rows"] if r.get("config") == "comfy_default"
                 and "composed" in r), None)
    for r in res["rows"]:
        if "composed" not in r:
            print(f"{r.get('config', '?'):14s} {r.get('error') or r.get('skipped') or 'no result'}")
            continue
        c = r["composed"]
        est = res.get("estimator", {}).get(r["config"], {})

        def err(e, m):
            return f"{100 * (e - m) / m:+.1f}" if e else "-"
        print(f"{r['config']:14s} {c['steady_step_s']:7.2f} {c['load_s']:6.2f} {c['swap_s']:6.2f} "
              f"{c['first_step_compile_s']:8.1f} {c['pin_s']:6.1f} {c['decode_s']:7.2f} {c['text_s']:5.2f} "
              f"{c['per_video_40_s']:8.1f} {base / c['per_video_40_s'] if base else float('nan'):8.2f} "
              f"{est.get('per_video_s') or float('nan'):7.1f} {err(est.get('per_video_s'), c['per_video_40_s']):>6s} "
              f"{c['first_video_40_s']:9.1f} {est.get('first_video_s') or float('nan'):7.1f} "
              f"{err(est.get('first_video_s'), c['first_video_40_s']):>6s}")


def estimator_rows(n_steps: int) -> dict:
    from wanmeter.estimator import Plan, Workload, estimate, get_gpu
    from wanmeter.estimator.calibration import load_calibration
    from wanmeter.estimator.sizes import compute_sizes
    from wanmeter.estimator.timing import first_call_seconds

    gpu = get_gpu("h200")
    wl = Workload(variant=VAR, width=W, height=H, frames=F, steps=n_steps)
    out = {}
    # comfy_default: no native-ComfyUI model here; PROXY = our estimator's stock-processor (diffusers) path with
    # pageable model offload (ComfyUI's forward measured within 2% of diffusers' on H200, speed.py 2026-11-22)
    plans = {"comfy_default": Plan(offload="model", fused_rotary=False),
             "ours_default": Plan(offload="model", pinned_swap=True),
             "ours_fast": Plan(offload="model", pinned_swap=True, weight_dtype="fp8_e4m3fn", fp8_compute=True,
                               compile=True, attention="8bit")}
    for k, p in plans.items():
        e = estimate(wl, p, gpu)
        first_call = first_call_seconds(compute_sizes(wl, p, load_calibration()), p, load_calibration())[0]
        # the pass reads no files (random weights): compare with per video + pinning + compilation only
        out[k] = {"plan": p.describe(), "per_video_s": e.per_video_s, "first_video_s": e.per_video_s + first_call,
                  "first_video_incl_file_read_s": e.first_video_s,
                  "text_encode_s": e.text_encode_s, "transfers_s": e.transfers_s, "denoise_s": e.denoise_s,
                  "decode_s": e.decode_s, "load_cold_s": e.load_cold_s, "expert_steps": list(wl.expert_steps())}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy", default=os.environ.get("WANMETER_COMFYUI", ""))
    ap.add_argument("--configs", default="comfy_default,comfy_fast,ours_default,ours_fast")
    ap.add_argument("--budget", type=float, default=500.0, help="seconds after which no new configuration starts")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--recompose", metavar="WHOLE_VIDEO_JSON",
                    help="no GPU: recompose a saved run with today's composition and estimator, print the table")
    args = ap.parse_args(argv)
    if args.recompose:
        res = json.loads(Path(args.recompose).read_text(encoding="utf-8"))
        n_high, n_low = res["full_steps"]["high"], res["full_steps"]["low"]
        for r in res["rows"]:
            if "step_s" in r:
                r["composed"] = compose(r, n_high, n_low, res["text_encode_s"])
        res["estimator"] = estimator_rows(STEPS_FULL)
        print_table(res)
        return 0
    env = Env(args.dry_run)
    from wanmeter.estimator import Workload
    from wanmeter.sampler import WanModelBundle
    from wanmeter.sampler.synthetic import random_dit

    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / ("whole_video_dryrun.json" if env.dry else "whole_video.json")
    res: dict = {"device": "cpu (dry run)" if env.dry else torch.cuda.get_device_name(), "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "workload": f"{VAR} {W}x{H}x{F}",
                 "pass_steps": PASS_STEPS, "shift": SHIFT, "rows": []}
    n_high, n_low = Workload(variant=VAR, width=W, height=H, frames=F, steps=STEPS_FULL, shift=SHIFT).expert_steps()
    res["full_steps"] = {"high": n_high, "low": n_low}

    def save():
        res["total_s"] = time.perf_counter() - T0
        out.write_text(json.dumps(res, indent=1, default=str))

    # text encoder first (alone on the GPU), then the experts
    te_model = build_text_encoder(env)
    t = time.perf_counter()
    experts = [random_dit(VAR, env.size, device=env.device, dtype=env.dtype, seed=i).requires_grad_(False) for i in (0, 1)]
    env.sync()
    res["build_experts_s"] = time.perf_counter() - t
    te = RandomTextEncoder(te_model, env, experts[0].config.text_dim)
    te.encode(["warm-up", ""])
    te.seconds = 0.0
    te.encode(["p", "n"])
    res["text_encode_s"] = te.seconds
    log(f"experts built in {res['build_experts_s']:.1f} s; text encode {res['text_encode_s']:.2f} s")
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    bundle = None
    for cfg in wanted:
        if args.budget and time.perf_counter() - T0 > args.budget:
            res["rows"].append({"config": cfg, "skipped": f"time budget {args.budget:.0f} s reached"})
            log(f"{cfg}: skipped (budget)")
            continue
        try:
            if cfg.startswith("comfy"):
                if not args.comfy:
                    raise RuntimeError("--comfy PATH (a ComfyUI checkout) is needed for the ComfyUI rows")
                if bundle is not None:
                    raise RuntimeError("run the ComfyUI configurations before ours (ours parks the experts)")
                for e in experts:
                    e.to(env.device)
                row = run_comfy(experts, env, args, cfg == "comfy_fast", res)
            else:
                if bundle is None:
                    bundle = WanModelBundle(VAR, experts)
                    vae = build_our_vae(env)
                row = run_ours(bundle, te, vae, env, cfg == "ours_fast")
            row["composed"] = compose(row, n_high, n_low, res["text_encode_s"])
            res["rows"].append(row)
            log(f"{cfg}: {json.dumps({k: v for k, v in row.items() if k != 'runtime'}, default=str)[:600]}")
        except Exception as e:  # noqa: BLE001
            res["rows"].append({"config": cfg, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2500:]})
            log(f"{cfg}: FAILED {type(e).__name__}: {e}")
        save()
    res["estimator"] = estimator_rows(STEPS_FULL)
    save()
    print_table(res)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
