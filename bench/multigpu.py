"""One A14B transformer step with CFG on 1, 2 and 4 GPUs of one host: speedup and exactness.

Schemes (each a separate spawn of one process per GPU; NCCL; no torchrun):
  single          1 GPU, cond + uncond forwards one after the other (the reference output)
  cfg2            2 GPUs: cond on rank 0, uncond on rank 1, predictions all-gathered
  ulysses2/4      diffusers' Ulysses context parallelism (sequence split, heads all-to-all)
  cfg2xulysses2   4 GPUs: a CFG pair of Ulysses-2 groups
  fsdp2_mem       2 GPUs: FSDP2 (fully_shard per block) weight sharding, memory only (one forward)

Every rank builds the same full-size random bf16 model directly on its GPU (same seed), runs one
warm-up step, then --reps timed steps (CUDA events between barriers; the max over ranks).
The guided prediction is compared with the single-GPU one (max abs difference, cosine).

    python3 bench/multigpu.py                       # 4 H200: ~5-7 min, table + $OUT/multigpu.json
    python3 bench/multigpu.py --dry-run             # CPU, gloo, tiny model, 2 processes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wanmeter.parallel.launch import free_port, multicast_off  # noqa: E402  (no torch import)
from wanmeter.parallel.layout import Layout  # noqa: E402

multicast_off()  # before torch / NCCL exist anywhere, parent and children alike

SCHEMES = {
    "single": Layout(),
    "cfg2": Layout(cfg=2),
    "ulysses2": Layout(ulysses=2),
    "cfg2xulysses2": Layout(cfg=2, ulysses=2),
    "ulysses4": Layout(ulysses=4),
    "fsdp2_mem": Layout(),  # world 2, see _fsdp_worker
}
WORLD = {"fsdp2_mem": 2}
# rough seconds per scheme on H200 at 720p (startup + build + warm-up + 2 reps), to respect --budget
COST_720P = {"single": 100, "cfg2": 60, "ulysses2": 65, "cfg2xulysses2": 45, "ulysses4": 45, "fsdp2_mem": 45}


def world_of(name: str) -> int:
    return WORLD.get(name, SCHEMES[name].world)


def model_config(dry: bool) -> dict:
    if dry:
        heads, hd, ffn, layers, text_dim = 4, 32, 256, 2, 64
    else:
        heads, hd, ffn, layers, text_dim = 40, 128, 13824, 40, 4096  # T2V-A14B (each expert)
    return dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=hd, in_channels=16,
                out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn, num_layers=layers,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def build_model(kw: dict, device, dtype):
    """Random weights made on the device by each layer's default init after torch.manual_seed(0),
    so every rank (same GPU type) holds the same weights; fp32 where diffusers keeps fp32."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = WanTransformer3DModel(**kw)
    finally:
        torch.set_default_dtype(old)
    keep = tuple(getattr(m, "_keep_in_fp32_modules", None) or ())
    with torch.no_grad():
        for name, p in m.named_parameters():
            want = torch.float32 if any(k in name.split(".") for k in keep) else dtype
            if p.dtype != want:
                p.data = p.data.to(want)
    return m.eval().requires_grad_(False)


def make_inputs(conf: dict, device, dtype):
    import torch

    g = torch.Generator().manual_seed(1)
    f, h, w = conf["latent"]
    x = torch.randn(1, 16, f, h, w, generator=g).to(device, dtype)
    pos = (0.5 * torch.randn(1, 512, conf["text_dim"], generator=g)).to(device, dtype)
    neg = (0.5 * torch.randn(1, 512, conf["text_dim"], generator=g)).to(device, dtype)
    t = torch.tensor([800.0], device=device)
    return x, t, pos, neg


def _fingerprint(model):
    import torch

    with torch.no_grad():
        return torch.stack([p.float().sum() for p in list(model.parameters())[:: max(1, len(list(model.parameters())) // 16)]])


def _check_same_weights(model, device) -> None:
    """All ranks must hold identical random weights, or the comparison means nothing."""
    import torch
    import torch.distributed as dist

    fp = _fingerprint(model).to(device)
    ref = fp.clone()
    dist.broadcast(ref, 0)
    if not torch.equal(fp, ref):
        raise RuntimeError("ranks built different random weights (different GPU types or nondeterministic init)")


class _Timer:
    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def __enter__(self):
        if self.cuda:
            self.e0, self.e1 = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            self.e0.record()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.e1.record()
            self.torch.cuda.synchronize()
            self.seconds = self.e0.elapsed_time(self.e1) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.t0


def _barrier(dist, world, device):
    if world > 1:
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def _max_over_ranks(values: list[float], device, world: int) -> list[float]:
    import torch
    import torch.distributed as dist

    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _worker(rank: int, names: list[str], world: int, port: int, conf: dict, out_dir: str) -> None:
    """Run `names` (schemes of one world size) in turn in this spawn; a fresh model per scheme
    (diffusers' parallelism is one-shot per model). Rank 0 writes <out_dir>/<scheme>.pt."""
    import torch
    import torch.distributed as dist

    backend = "gloo" if conf["dry"] else "nccl"
    if world > 1:
        from wanmeter.parallel import init_worker

        device = init_worker(rank, world, port, backend, timeout_s=240.0)  # a hang aborts, not eats the budget
    else:
        device = torch.device("cpu") if conf["dry"] else torch.device("cuda", 0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    dtype = torch.float32 if conf["dry"] else torch.bfloat16
    if conf["dry"]:
        torch.set_num_threads(1)  # CPU processes share few cores
    try:
        for name in names:
            try:
                res = _one_scheme(name, conf, device, dtype, rank, world)
            except Exception as e:  # symmetric failures (e.g. a refused config): record, go on
                traceback.print_exc()
                res = dict(error=f"{type(e).__name__}: {e}"[-2000:])
            if rank == 0:
                torch.save(res, os.path.join(out_dir, f"{name}.pt"))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _barrier(dist, world, device)  # nobody starts the next scheme (or tears down) early
    finally:
        if world > 1:
            dist.destroy_process_group()


def _one_scheme(name: str, conf: dict, device, dtype, rank: int, world: int) -> dict:
    import torch
    import torch.distributed as dist

    from wanmeter.parallel import build_groups, enable_ulysses, guided_prediction

    t0 = time.perf_counter()
    model = build_model(conf["model"], device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    if world > 1:
        _check_same_weights(model, device)
    if name == "fsdp2_mem":
        res = _fsdp_measure(model, conf, device, dtype, rank, world)
        res["build_s"] = build_s
        return res
    layout = SCHEMES[name]
    groups = build_groups(layout, device.type)
    if layout.ulysses > 1:
        enable_ulysses(model, groups.cp_mesh, layout.ulysses, device.type)
    x, t, pos, neg = make_inputs(conf, device, dtype)
    seen: list[int] = []  # tokens each rank's first block sees: proves the sequence was split
    hook = model.blocks[0].norm1.register_forward_hook(lambda mod, a, out: seen.append(int(out.shape[1])))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with torch.no_grad():
            return guided_prediction(model, x, t, pos, neg, conf["guidance"], groups.cfg_group, groups.cfg_rank)

    _barrier(dist, world, device)
    with _Timer(device) as tw:
        pred = step()
    times = []
    for _ in range(conf["reps"]):
        _barrier(dist, world, device)
        with _Timer(device) as tm:
            pred = step()
        times.append(tm.seconds)
    hook.remove()
    times = _max_over_ranks(times, device, world)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    peak = _max_over_ranks([peak], device, world)[0]
    return dict(times=times, warmup_s=tw.seconds, build_s=build_s, peak_gib=peak, pred=pred.cpu(),
                local_tokens=seen[0])


def _fsdp_measure(model, conf, device, dtype, rank, world) -> dict:
    """FSDP2: each block (and the root) sharded over the 2 ranks; weights resident per GPU and the
    peak of one conditional forward. Not a speed scheme: both ranks compute the same forward."""
    import torch
    from torch.distributed.fsdp import fully_shard

    def resident():
        return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0

    before = resident()
    for blk in model.blocks:
        fully_shard(blk)
    fully_shard(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    after = resident()
    x, t, pos, _ = make_inputs(conf, device, dtype)
    with torch.no_grad(), _Timer(device) as tm:
        out = model(hidden_states=x, timestep=t, encoder_hidden_states=pos, return_dict=False)[0]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return dict(weights_gib_unsharded=before, weights_gib_sharded=after, peak_gib=peak, forward_s=tm.seconds,
                cond_out=out.float().cpu())


def run_group(names: list[str], world: int, conf: dict, tmp: str) -> dict[str, dict]:
    """One spawn of `world` processes for `names`; returns each scheme's result (or its error)."""
    import torch
    import torch.multiprocessing as mp

    t0 = time.perf_counter()
    err = None
    try:
        mp.spawn(_worker, args=(names, world, free_port(), conf, tmp), nprocs=world, join=True)
    except Exception as e:  # a crashed or hung worker: the schemes it did not finish get this error
        traceback.print_exc()
        err = f"{type(e).__name__}: {e}"[-2000:]
    out = {}
    for n in names:
        path = os.path.join(tmp, f"{n}.pt")
        out[n] = torch.load(path, weights_only=False) if os.path.exists(path) else dict(error=err or "no result")
    out["_wall_s"] = time.perf_counter() - t0
    return out


def compare(a, b) -> dict:
    import torch

    a, b = a.flatten().double(), b.flatten().double()
    return dict(max_abs=float((a - b).abs().max()), ref_max_abs=float(b.abs().max()),
                cos=float(torch.nn.functional.cosine_similarity(a, b, dim=0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, gloo, tiny model")
    ap.add_argument("--schemes", default="single,cfg2,ulysses2,cfg2xulysses2,ulysses4,fsdp2_mem")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs available (default: all visible; dry-run: 2)")
    ap.add_argument("--size", default="1280x720x81", help="WxHxF of the video")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--budget", type=float, default=430.0, help="seconds; schemes that would overrun are skipped")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/multigpu.json or bench/results/)")
    args = ap.parse_args(argv)

    w, h, f = (int(v) for v in args.size.split("x"))
    latent = (3, 4, 8) if args.dry_run else ((f - 1) // 4 + 1, h // 8, w // 8)
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    mk = model_config(args.dry_run)
    conf = dict(dry=args.dry_run, model=mk, latent=latent, text_dim=mk["text_dim"], reps=args.reps,
                guidance=args.guidance)
    if args.gpus is None:
        if args.dry_run:
            args.gpus = 2
        else:
            import torch

            args.gpus = torch.cuda.device_count()
    names = [n.strip() for n in args.schemes.split(",") if n.strip()]
    bad = [n for n in names if n not in SCHEMES]
    if bad:
        ap.error(f"unknown schemes {bad}; known: {', '.join(SCHEMES)}")
    if "single" not in names:
        names.insert(0, "single")
    names = [n for n in names if world_of(n) <= args.gpus]
    print(f"multigpu: {args.size} ({tokens} tokens), {'dry-run CPU' if args.dry_run else 'CUDA'}, "
          f"{args.gpus} GPUs, schemes {names}", flush=True)

    start = time.perf_counter()
    results, ref = [], None
    by_world: dict[int, list[str]] = {}
    for n in names:
        by_world.setdefault(world_of(n), []).append(n)
    with tempfile.TemporaryDirectory() as tmp:
        for world in sorted(by_world):
            group, left = [], args.budget - (time.perf_counter() - start)
            for n in by_world[world]:
                cost = COST_720P.get(n, 60) * tokens / 75600
                if args.dry_run or n == "single" or cost <= left:
                    group.append(n)
                    left -= cost
                else:
                    results.append(dict(scheme=n, gpus=world, skipped=f"budget ({left:.0f} s left)"))
                    print(f"  {n}: skipped (budget)", flush=True)
            if not group:
                continue
            got = run_group(group, world, conf, tmp)
            for name in group:
                res, row = got[name], dict(scheme=name, gpus=world, group_wall_s=round(got["_wall_s"], 1))
                if "error" in res:
                    row["error"] = res["error"]
                    results.append(row)
                    print(f"  {name}: ERROR {res['error'][:300]}", flush=True)
                    continue
                row["build_s"] = round(res["build_s"], 2)
                row["peak_gib"] = round(res["peak_gib"], 2)
                if name == "fsdp2_mem":
                    row.update({k: round(res[k], 3) for k in ("weights_gib_unsharded", "weights_gib_sharded",
                                                              "forward_s")})
                    row["finite"] = bool(res["cond_out"].isfinite().all())
                else:
                    row["step_s"] = statistics.median(res["times"])
                    row["timings"] = res["times"]
                    row["warmup_s"] = res["warmup_s"]
                    row["tokens"], row["local_tokens"] = tokens, res["local_tokens"]
                    if name == "single":
                        ref = dict(pred=res["pred"], step_s=row["step_s"])
                    if ref is not None:
                        row["speedup"] = ref["step_s"] / row["step_s"]
                        row.update(compare(res["pred"], ref["pred"]))
                results.append(row)
                print(f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'timings'})}", flush=True)

    print(f"\n{'scheme':<15}{'gpus':>5}{'s/step':>9}{'speedup':>9}{'max_abs':>11}{'cos':>11}{'peak GiB':>10}")
    for r in results:
        if "step_s" in r:
            print(f"{r['scheme']:<15}{r['gpus']:>5}{r['step_s']:>9.3f}{r['speedup']:>9.2f}{r['max_abs']:>11.3g}"
                  f"{r['cos']:>11.6f}{r['peak_gib']:>10.1f}")
        elif "weights_gib_sharded" in r:
            print(f"{r['scheme']:<15}{r['gpus']:>5}  weights/GPU {r['weights_gib_unsharded']:.1f} -> "
                  f"{r['weights_gib_sharded']:.1f} GiB, one-forward peak {r['peak_gib']:.1f} GiB, {r['forward_s']:.2f} s")
        else:
            print(f"{r['scheme']:<15}{r['gpus']:>5}  {r.get('skipped') or r.get('error', '')[:200]}")
    targets = {2: 1.8, 4: 3.2}
    for g, want in targets.items():
        best = max((r["speedup"] for r in results if r.get("gpus") == g and "speedup" in r), default=None)
        if best is not None:
            print(f"target {g} GPUs >= {want}x: best {best:.2f}x {'OK' if best >= want else 'MISSED'}")

    meta = dict(size=args.size, tokens=tokens, dry_run=args.dry_run, gpus=args.gpus, reps=args.reps,
                guidance=args.guidance, total_s=time.perf_counter() - start, argv=sys.argv[1:])
    if not args.dry_run:
        import torch

        meta.update(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                    nccl=".".join(map(str, torch.cuda.nccl.version())))
    out = Path(args.out) if args.out else Path(os.environ.get("OUT") or ROOT / "bench" / "results") / "multigpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    print(f"wrote {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
