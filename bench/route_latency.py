"""Latency of the live-estimate routes under load (issue 18), on the CPU, no GPU needed.

A server process serves a tiny aiohttp app on 127.0.0.1 with the pack's routes registered on it
(nodes/routes.register, ComfyUI replaced by the test stubs; the models folder holds the tiny
TI2V-5B file, so the variant is read from a real header). This process then measures, as HTTP
clients:
  1. POST /wanmeter/estimate from one client (warm): p50 / p99;
  2. GET /wanmeter/gpus alone: p50 / p99;
  3. 8 concurrent estimating clients, with GET /wanmeter/gpus probed every 20 ms meanwhile:
     estimate p50 / p99 and gpus p50 / p99 under load.
The same three runs are repeated with the estimate run inline on the event loop (the code before
issue 18's fix, --no-inline to skip), so the printed ratios come from one run on one machine.
Targets (issue 18, warm, CI machine): estimate p50 <= 20 ms, p99 <= 50 ms; gpus p99 <= 10 ms under 8
clients. Bounded: --requests per client and --max-seconds per phase.

    python3 bench/route_latency.py [--clients 8] [--requests 40] [--max-seconds 60] [--shape graph]

--shape settings (default) posts flat settings, what API users send; --shape graph posts
{"graph": workflow, "sampler_id": null} for the bundled workflows, what the browser sends.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # what API users post as flat settings: a few sizes, models and GPUs
    {"model": "wan2.2_ti2v_5B_fp16.safetensors", "width": 1280, "height": 704, "frames": 121, "steps": 50,
     "cfg_high": 5.0, "weight_dtype": "bf16", "offload": "auto", "gpu": "RTX 4090"},
    {"model": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "model_low_noise": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
     "width": 1280, "height": 720, "frames": 81, "steps": 40, "cfg_high": 4.0, "cfg_low": 3.0, "weight_dtype": "fp8_e4m3fn",
     "offload": "auto", "gpu": "RTX 4090"},
    {"model": "wan2.2_i2v_high_noise_14B_fp16.safetensors", "width": 832, "height": 480, "frames": 81, "steps": 40,
     "weight_dtype": "bf16", "offload": "none", "gpu": "H100 SXM", "attention": "sage"},
    {"model": "wan2.2_s2v_14B_bf16.safetensors", "width": 832, "height": 480, "frames": 80, "steps": 40,
     "weight_dtype": "bf16", "offload": "auto", "gpu": "L4"},
    {"model": "wan/tiny_wan2.2_ti2v_5B.safetensors", "width": 1280, "height": 704, "frames": 121, "steps": 50,
     "weight_dtype": "bf16", "offload": "model", "gpu": "RTX 3090"},
]


def bodies(shape: str) -> list[bytes]:
    if shape == "graph":
        return [json.dumps({"graph": json.loads(p.read_text()), "sampler_id": None}).encode()
                for p in sorted((ROOT / "workflows").glob("*.json"))]
    return [json.dumps(x).encode() for x in SETTINGS]


def _stubs():
    spec = importlib.util.spec_from_file_location("wanmeter_comfy_stubs", ROOT / "tests" / "comfy_stubs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def serve(port_file: str, inline: bool) -> None:
    """The server process: the pack's routes on a bare aiohttp app (ComfyUI's PromptServer stand-in)."""
    from aiohttp import web

    from wanmeter.tiny import ensure_tiny_models

    stubs = _stubs()
    models = Path(tempfile.mkdtemp(prefix="wanmeter_bench_models_"))
    for sub in ("diffusion_models/wan", "text_encoders", "vae", "audio_encoders"):
        (models / sub).mkdir(parents=True)
    shutil.copyfile(ensure_tiny_models(names=["dit_ti2v"])["dit_ti2v"], models / "diffusion_models" / "wan" /
                    "tiny_wan2.2_ti2v_5B.safetensors")
    for name, mod in stubs.make_stubs(models).items():
        sys.modules[name] = mod
    pack = stubs.import_pack()
    routes = pack.nodes.routes
    if inline:  # the behaviour before issue 18: the estimate runs on the event loop
        async def on_loop(fn, *args):
            return fn(*args)

        routes.run_off_loop = on_loop

    class Server:
        routes = web.RouteTableDef()

    routes.register(Server)
    app = web.Application()
    app.add_routes(Server.routes)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        Path(port_file).write_text(str(port))
        await asyncio.Event().wait()

    asyncio.run(main())


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def measure(port: int, clients: int, requests: int, max_s: float, shape: str = "settings") -> dict[str, list[float]]:
    import aiohttp

    payloads = bodies(shape)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {"estimate_1": [], "gpus_idle": [], "estimate_n": [], "gpus_load": []}
    async with aiohttp.ClientSession() as s:
        async def post(i: int) -> float:
            t = time.perf_counter()
            async with s.post(base + "/wanmeter/estimate", data=payloads[i % len(payloads)]) as r:
                await r.read()
                assert r.status == 200, (r.status, await r.text())
            return (time.perf_counter() - t) * 1e3

        async def get() -> float:
            t = time.perf_counter()
            async with s.get(base + "/wanmeter/gpus") as r:
                await r.read()
                assert r.status == 200
            return (time.perf_counter() - t) * 1e3

        for i in range(2 * len(payloads)):  # warm: imports, headers, memos
            await post(i)
        t0 = time.perf_counter()
        for i in range(requests * 2):
            out["estimate_1"].append(await post(i))
            if time.perf_counter() - t0 > max_s:
                break
        t0 = time.perf_counter()
        for _ in range(requests * 2):
            out["gpus_idle"].append(await get())
            if time.perf_counter() - t0 > max_s:
                break
        stop = asyncio.Event()
        t0 = time.perf_counter()

        async def client(c: int) -> None:
            for i in range(requests):
                out["estimate_n"].append(await post(c + i))
                if time.perf_counter() - t0 > max_s:
                    break

        async def prober() -> None:
            while not stop.is_set():
                out["gpus_load"].append(await get())
                await asyncio.sleep(0.02)

        probe = asyncio.ensure_future(prober())
        await asyncio.gather(*(client(c) for c in range(clients)))
        stop.set()
        await probe
    return out


def run(inline: bool, args) -> dict[str, list[float]]:
    port_file = tempfile.mktemp(prefix="wanmeter_port_")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, __file__, "--serve", port_file] + (["--inline"] if inline else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        t0 = time.time()
        while not (Path(port_file).exists() and Path(port_file).read_text()):
            if proc.poll() is not None or time.time() - t0 > 120:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        return asyncio.run(measure(int(Path(port_file).read_text()), args.clients, args.requests, args.max_seconds,
                                   args.shape))
    finally:
        proc.terminate()
        proc.wait(10)
        Path(port_file).unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=40, help="estimates per client under load (x2 for the single-client runs)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="bound on each phase")
    ap.add_argument("--no-inline", action="store_true", help="skip the comparison run with the estimate on the event loop")
    ap.add_argument("--shape", choices=("settings", "graph"), default="settings",
                    help="flat settings (API users) or the workflow graph (what the browser sends)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.inline)
        return
    runs = {"worker thread (now)": run(False, args)}
    if not args.no_inline:
        runs["on the event loop (before)"] = run(True, args)
    print(f"route latency, ms, {args.shape} bodies ({args.clients} estimating clients under load; {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]})")
    print(f"{'':28} {'estimate 1 client':>20} {'gpus idle':>16} {f'estimate x{args.clients}':>20} {'gpus under load':>20}")
    for name, r in runs.items():
        cells = [f"p50 {pct(r[k], 50):6.1f} p99 {pct(r[k], 99):6.1f}" for k in ("estimate_1", "gpus_idle", "estimate_n", "gpus_load")]
        print(f"{name:28} " + " ".join(f"{c:>20}" for c in cells) + f"   (n={[len(r[k]) for k in r]})")
    if len(runs) == 2:
        a, b = runs.values()
        print(f"gpus p99 under load, before/now: {pct(b['gpus_load'], 99) / pct(a['gpus_load'], 99):.1f}x")
    now = runs["worker thread (now)"]
    print(f"targets: estimate p50 {pct(now['estimate_1'], 50):.1f} <= 20, p99 {pct(now['estimate_1'], 99):.1f} <= 50; "
          f"gpus p99 under load {pct(now['gpus_load'], 99):.1f} <= 10 (ms)")


if __name__ == "__main__":
    main()
