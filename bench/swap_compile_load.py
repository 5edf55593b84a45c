#!/usr/bin/env python3
"""Expert swap (pageable vs pinned), first-call compile, and cold load, measured for the estimator.

    python3 bench/swap_compile_load.py --parts link,swap,compile,load   # GPU (~5 min on an H200)
    python3 bench/swap_compile_load.py --dry-run                        # CPU, tiny models: every code path

link     host<->GPU copy rates of one 4 GiB tensor: pinned and pageable, both directions.
swap     two full-size random T2V-A14B experts (bf16, then fp8 storage through diffusers' layerwise
         casting) under wanmeter.runtime.Placement with offload="model": first the pageable path
         (pinned_swap=False: activate 0, then the swap to 1), then pinned_swap=True (parking time,
         activate 0, swap to 1, swap back to 0), with a small forward after each activation; the
         outputs of both paths must be identical (same weights, same inputs).
compile  in a fresh Python process per case with an empty TORCHINDUCTOR_CACHE_DIR: build the expert,
         apply the runtime's attention, regional compile (wanmeter.accel.compile_blocks, as
         RuntimeOptions(compile=True) does); the first forward (cold compile) and the median of 2 more.
load     write a full-size random DiT in the official layout to a safetensors file on local disk
         (/tmp), drop the page cache (if allowed), then time load_dit(path, device="cuda") and a raw
         O_DIRECT read of the file (dd). Cases: TI2V-5B bf16 file, T2V-A14B fp8 file.
Writes $OUT/swap_compile_load.json (or bench/results/).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

GIB = 1024 ** 3
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def nbytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- link

def part_link(dev: torch.device, dry: bool) -> dict:
    n = (16 << 20) if dry else (4 << 30)
    out = {"bytes": n}
    if dev.type != "cuda":
        return {**out, "skipped": "no CUDA"}
    gpu = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    for kind in ("pinned", "pageable"):
        host = torch.empty(n, dtype=torch.uint8, pin_memory=kind == "pinned")
        host.fill_(1)
        for direction in ("h2d", "d2h"):
            ts = []
            for _ in range(3):
                sync(dev)
                t = time.perf_counter()
                if direction == "h2d":
                    gpu.copy_(host, non_blocking=kind == "pinned")
                else:
                    host.copy_(gpu, non_blocking=kind == "pinned")
                sync(dev)
                ts.append(time.perf_counter() - t)
            out[f"{kind}_{direction}_gbps"] = n / statistics.median(ts) / 1e9
        del host
    # what a pageable .to() of a fresh CPU tensor costs (allocation and first touch included)
    ts = []
    for _ in range(2):
        t = time.perf_counter()
        h = gpu.to("cpu")
        ts.append(time.perf_counter() - t)
        del h
    out["to_cpu_fresh_gbps"] = n / statistics.median(ts) / 1e9
    del gpu
    free()
    return out


# ---------------------------------------------------------------- swap

def _small_inputs(model, dev: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    c = model.config
    x = torch.randn(1, c.in_channels, 1, 8, 8, generator=g).to(dev, dtype)
    ctx = torch.randn(1, 16, c.text_dim, generator=g).to(dev, dtype)
    return x, torch.tensor([500.0], device=dev), ctx


def _forward(model, inp) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=inp[0], timestep=inp[1], encoder_hidden_states=inp[2], return_dict=False)[0].float().cpu()


def _build_experts(weights: str, dev: torch.device, size: str, dtype: torch.dtype):
    from wanmeter.sampler.synthetic import random_dit

    experts = []
    for i in range(2):
        m = random_dit("t2v_a14b", size, device=dev, dtype=dtype, seed=i)
        if weights == "fp8":
            m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        experts.append(m.requires_grad_(False))
    return experts


def part_swap(dev: torch.device, dry: bool, weights: str) -> dict:
    from wanmeter.runtime import Placement, RuntimeOptions

    size = "tiny" if dry else "full"
    dtype = torch.float32 if dry else torch.bfloat16
    t = time.perf_counter()
    experts = _build_experts(weights, dev, size, dtype)
    expert_bytes = nbytes(experts[0])
    sync(dev)
    row = {"weights": weights, "expert_bytes": expert_bytes, "build_s": time.perf_counter() - t}
    # pageable: the weights first go to CPU memory with .to() (what a loader leaves, pageable)
    t = time.perf_counter()
    for m in experts:
        m.to("cpu")
    free()
    row["pageable_park_s"] = time.perf_counter() - t
    log(f"swap {weights}: experts of {expert_bytes / GIB:.2f} GiB built and parked (pageable) "
        f"in {row['pageable_park_s']:.1f} s")
    inp = _small_inputs(experts[0], dev, dtype)
    outs = {}
    for pinned in (False, True):
        tag = "pinned" if pinned else "pageable"
        t = time.perf_counter()
        p = Placement(experts, RuntimeOptions(device=str(dev), offload="model", pinned_swap=pinned))
        sync(dev)
        row[f"{tag}_placement_s"] = time.perf_counter() - t
        row[f"{tag}_pin_s"] = p.pin_seconds
        seq = [0, 1] if not pinned else [0, 1, 0, 1]
        times, o = [], []
        for i in seq:
            s0 = p.swap_seconds
            m = p.activate(i)
            times.append(p.swap_seconds - s0)
            o.append(_forward(m, inp))
        row[f"{tag}_activate_s"] = times
        if pinned:
            row["pinned_copies_out"] = [p._parking[i].copies_out for i in (0, 1)]
            row["pinned_master_bytes"] = [p._parking[i].pinned_bytes for i in (0, 1)]
        outs[tag] = o
        p.teardown()
        del p, m
        free()
        log(f"swap {weights} {tag}: placement {row[f'{tag}_placement_s']:.1f} s, activations "
            + ", ".join(f"{x:.2f}" for x in times) + " s")
    row["outputs_identical"] = all(torch.equal(a, b) for a, b in zip(outs["pageable"], outs["pinned"][:2]))
    row["outputs_identical_after_round_trip"] = (torch.equal(outs["pinned"][0], outs["pinned"][2])
                                                 and torch.equal(outs["pinned"][1], outs["pinned"][3]))
    del experts
    free()
    return row


# ---------------------------------------------------------------- compile (child process)

COMPILE_CASES = {"a14b_480p": ("t2v_a14b", 832, 480, 81), "ti2v_5b_720p": ("ti2v_5b", 1280, 704, 121),
                 "a14b_720p": ("t2v_a14b", 1280, 720, 81)}


def compile_child(case: str, dry: bool) -> dict:
    """Runs in its own process: cold regional compile of one expert, first vs steady forward."""
    from wanmeter.accel import compile_blocks
    from wanmeter.runtime.attention import apply_attention
    from wanmeter.sampler.synthetic import random_dit
    from wanmeter.variants import vae_family, variant

    var, w, h, f = COMPILE_CASES[case]
    dev = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    m = random_dit(var, "tiny" if dry else "full", device=dev, dtype=dtype, seed=0).requires_grad_(False)
    apply_attention(m, "auto", dev)
    s = int(vae_family(variant(var)["vae"])["stride_s"])
    lf, lh, lw = ((f - 1) // 4 + 1, h // s, w // s) if not dry else (2, 4, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, m.config.in_channels, lf, lh, lw, generator=g).to(dev, dtype)
    ctx = torch.randn(1, 512 if not dry else 16, m.config.text_dim, generator=g).to(dev, dtype)
    n = lf * (lh // 2) * (lw // 2)
    ts = torch.full((1, n), 500.0, device=dev) if var == "ti2v_5b" else torch.tensor([500.0], device=dev)

    def fwd():
        with torch.no_grad():
            m(hidden_states=x, timestep=ts, encoder_hidden_states=ctx, return_dict=False)
        sync(dev)

    fwd()  # eager warm-up: cuDNN/cuBLAS handles and autotuning stay out of the compile figure
    t = time.perf_counter()
    fwd()
    eager = time.perf_counter() - t
    compile_blocks(m)
    t = time.perf_counter()
    fwd()
    first = time.perf_counter() - t
    steady = []
    for _ in range(2):
        t = time.perf_counter()
        fwd()
        steady.append(time.perf_counter() - t)
    return {"case": case, "tokens": n, "eager_s": eager, "first_compiled_s": first, "steady_compiled_s": statistics.median(steady),
            "compile_overhead_s": first - statistics.median(steady), "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}


def part_compile(dry: bool, cases: list[str]) -> list[dict]:
    rows = []
    for case in cases:
        cache = tempfile.mkdtemp(prefix="inductor_cold_")
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache + "/triton"}
        cmd = [sys.executable, __file__, "--compile-child", case] + (["--dry-run"] if dry else [])
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        wall = time.perf_counter() - t
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("COMPILE_RESULT ")]
        if r.returncode or not line:
            rows.append({"case": case, "error": (r.stderr or r.stdout)[-1500:], "process_s": wall})
        else:
            rows.append({**json.loads(line[-1][len("COMPILE_RESULT "):]), "process_s": wall})
        log(f"compile {case}: {rows[-1]}")
    return rows


# ---------------------------------------------------------------- cold load

def _drop_caches(dry: bool) -> bool:
    if dry:  # never on a shared development machine
        return False
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def part_load(dev: torch.device, dry: bool, case: str, warm: bool = False) -> dict:
    from safetensors.torch import save_file

    from wanmeter.loader import load_dit
    from wanmeter.loader.dit_keys import diffusers_to_official
    from wanmeter.sampler.synthetic import random_dit

    var, fmt = {"ti2v_5b_bf16": ("ti2v_5b", "bf16"), "a14b_fp8": ("t2v_a14b", "fp8_e4m3fn")}[case]
    size = "tiny" if dry else "full"
    m = random_dit(var, size, device=dev, dtype=torch.bfloat16, seed=0)
    sd = m.state_dict()
    names = diffusers_to_official(sd.keys(), m.config.num_layers)
    file_dtype = torch.float8_e4m3fn if fmt.startswith("fp8") else torch.bfloat16
    off = {}
    for o, d in names.items():
        t = sd[d]
        # block linears in fp8 (as fp8 releases store them); norms, biases, embeddings stay bf16
        t = t.to(file_dtype) if file_dtype != torch.bfloat16 and o.startswith("blocks.") and t.ndim == 2 else t.to(torch.bfloat16)
        off[o] = t.contiguous().cpu()
    del m, sd
    free()
    path = Path(tempfile.gettempdir()) / f"wanmeter_cold_{case}.safetensors"
    t = time.perf_counter()
    save_file(off, str(path))
    write_s = time.perf_counter() - t
    size_b = path.stat().st_size
    del off
    gc.collect()
    row = {"case": case, "variant": var, "file_bytes": size_b, "write_s": write_s}
    dropped = _drop_caches(dry)
    t = time.perf_counter()
    dd = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"], capture_output=True, text=True)
    row["dd_direct_s"] = time.perf_counter() - t
    row["dd_ok"] = dd.returncode == 0
    row["disk_gbps"] = size_b / row["dd_direct_s"] / 1e9 if row["dd_ok"] else None
    row["page_cache_dropped"] = _drop_caches(dry) and dropped
    t = time.perf_counter()
    loaded = load_dit(path, weight_dtype=fmt, device=dev)
    sync(dev)
    row["load_dit_s"] = time.perf_counter() - t
    row["loaded_bytes"] = nbytes(loaded.model)
    del loaded
    free()
    if warm:  # warm page cache: the same load again (what a second load in one session costs)
        t = time.perf_counter()
        loaded = load_dit(path, weight_dtype=fmt, device=dev)
        sync(dev)
        row["load_dit_warm_cache_s"] = time.perf_counter() - t
        del loaded
        free()
    path.unlink()
    log(f"load {case}: {row}")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="link,swap,compile,load")
    ap.add_argument("--swap-weights", default="bf16,fp8")
    ap.add_argument("--compile-cases", default="ti2v_5b_720p,a14b_480p")
    ap.add_argument("--load-cases", default="ti2v_5b_bf16,a14b_fp8")
    ap.add_argument("--load-warm", action="store_true", help="also time a second load from the page cache")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which no new part starts")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--compile-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    if args.compile_child:
        print("COMPILE_RESULT " + json.dumps(compile_child(args.compile_child, dry)), flush=True)
        return 0
    dev = torch.device("cpu" if dry else "cuda")
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / ("swap_compile_load_dryrun.json" if dry else "swap_compile_load.json")
    res: dict = {"device": "cpu (dry run)" if dry else torch.cuda.get_device_name(), "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv[1:]}

    def save():
        res["total_s"] = time.perf_counter() - T0
        out.write_text(json.dumps(res, indent=1, default=str))

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    jobs = []
    if "link" in parts:
        jobs.append(("link", lambda: part_link(dev, dry)))
    if "swap" in parts:
        for w in args.swap_weights.split(","):
            jobs.append((f"swap_{w}", lambda w=w: part_swap(dev, dry, w)))
    if "compile" in parts:
        jobs.append(("compile", lambda: part_compile(dry, args.compile_cases.split(","))))
    if "load" in parts:
        for c in args.load_cases.split(","):
            jobs.append((f"load_{c}", lambda c=c: part_load(dev, dry, c, args.load_warm)))
    for name, fn in jobs:
        if args.budget and time.perf_counter() - T0 > args.budget:
            res[name] = {"skipped": f"time budget {args.budget:.0f} s reached"}
            log(f"{name}: skipped (budget)")
            continue
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
            import traceback

            res[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            log(f"{name}: FAILED {type(e).__name__}: {e}")
        save()
    save()
    print(json.dumps({k: v for k, v in res.items() if k not in ("argv",)}, indent=1, default=str)[:6000])
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
