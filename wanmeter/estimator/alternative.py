"""One line beside a ComfyUI-native or kijai estimate: what WanMeter's own nodes would take for the same
video on the same GPU (its automatic plan, and its fastest path), and the exact change to get it."""
from __future__ import annotations

from .estimate import estimate
from .gpus import GpuSpec
from .sizes import GIB
from .workload import Plan, Workload


def _fast_base(plan: Plan, gpu: GpuSpec) -> Plan:
    """WanMeter's fastest single-GPU path on this GPU: fp8 matmuls where the GPU has them, regional compile,
    the 8-bit attention kernel where it runs (Ada / Hopper / Blackwell), else SDPA."""
    from .calibration import load_calibration

    cal = load_calibration()
    eight = gpu.has_fp8 and float(cal.v(f"attention_fraction_of_matmul.{gpu.arch}.8bit")) > 0
    return Plan(text_encoder_dtype=plan.text_encoder_dtype, compile=True, fp8_compute=gpu.has_fp8,
                attention="8bit" if eight else "sdpa", lora_mode="merged")


def _source(plan: Plan) -> str:
    return plan.weight_dtype if plan.weight_dtype in ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2") or plan.is_gguf \
        else "bf16"


def _node_change(w: Workload, p: Plan) -> str:
    f = w.facts
    off = {"none": "offload none", "model": "offload model"}.get(p.offload, f"offload blocks, blocks_to_stream {p.blocks_to_stream}")
    loader = (f"WanMeter Model Loader (weight_dtype {p.weight_dtype}, compute_dtype {'fp8' if p.fp8_compute else 'bf16'}, "
              f"{off}, attention {p.attention}, compile {'on' if p.compile else 'off'}"
              + (", model_low_noise = the low-noise file" if int(f["experts"]) > 1 else "") + ")")
    cfg = "/".join(f"{c:g}" for c in w.cfg)
    sampler = (f"WanMeter {'S2V ' if w.variant == 's2v_14b' else ''}Sampler ({w.width}x{w.height}, "
               f"{'frames ' + str(w.frames) + ', ' if w.variant != 's2v_14b' else ''}steps {w.steps}, cfg {cfg}"
               + (f", shift {w.shift:g}" if w.shift else "") + ")")
    tiled = ", WanMeter VAE Decode tiled" if p.vae_tiled else ""
    te = ", text encoder on CPU" if p.text_encoder_device == "cpu" else ""
    return f"{loader} + {sampler}{tiled}{te}"


def alternative_line(workload: Workload, plan: Plan, gpu: GpuSpec) -> str:
    """'WanMeter nodes on RTX 4090: 412 s/video auto (...), 298 s fastest (...) vs 530 s here. Change: ...'."""
    from ..errors import WanMeterError
    from ..memplan import plan_for

    here = estimate(workload, plan, gpu).per_video_s
    budget = (plan.budget_gib if plan.budget_gib is not None else gpu.usable_gib) * GIB
    ram = None if plan.ram_gib is None else plan.ram_gib * GIB
    src = _source(plan)
    try:
        auto = plan_for(workload, budget, ram, gpu, source=src, base=Plan(text_encoder_dtype=plan.text_encoder_dtype,
                                                                           lora_mode="merged"))
        fast = plan_for(workload, budget, ram, gpu, source=src, base=_fast_base(plan, gpu))
    except WanMeterError as e:
        return f"WanMeter nodes on {gpu.name}: {e}"
    a, f = auto.estimate.per_video_s, fast.estimate.per_video_s
    best = fast if f <= a else auto
    speed = here / best.estimate.per_video_s if best.estimate.per_video_s > 0 else 0.0
    extras = [n for n, on in (("fp8 matmuls", best.plan.fp8_compute and gpu.has_fp8), ("compile", best.plan.compile),
                              ("8-bit attention", best.plan.attention == "8bit")) if on]
    return (f"WanMeter nodes, same video on {gpu.name}: {a:.0f} s/video with the automatic plan "
            f"({auto.description.split(':')[0]}), {best.estimate.per_video_s:.0f} s on its fastest path"
            + (f" ({', '.join(extras)})" if extras else "") + f", vs {here:.0f} s here ({speed:.2f}x). "
            f"Change: {_node_change(workload, best.plan)}.")


__all__ = ["alternative_line"]
