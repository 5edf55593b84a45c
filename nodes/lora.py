"""WanMeter LoRA: merge a LoRA file into the expert(s) of a WANMETER_MODEL (chainable).

The merge itself is wanmeter.accel.merge_lora. It happens in place (a 14B copy per LoRA would
not fit anywhere), so the node remembers what it merged into that model and takes it back out
before merging again when only its own widgets changed.
"""
from __future__ import annotations

from typing import Any

from ..wanmeter.errors import WanMeterError
from . import common as c
from .parallel_bundle import LoraSpec, expert_indices


class WanMeterLoRA:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return c.input_types("WanMeterLoRA")

    RETURN_TYPES = (c.WANMETER_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with the LoRA merged in (chain more WanMeter LoRA nodes for more LoRAs).",)
    FUNCTION = "apply"
    CATEGORY = c.CATEGORY
    DESCRIPTION = "Merge a LoRA into a Wan2.2 T2V/I2V/TI2V model loaded by WanMeter Model Loader."

    def apply(self, model, lora: str, strength: float, apply_to: str, unique_id: str | None = None):
        from ..wanmeter.sampler import WanModelBundle
        from .parallel_bundle import merge_loras

        if not isinstance(model, WanModelBundle):
            raise WanMeterError("WanMeter LoRA takes a T2V/I2V/TI2V model from WanMeter Model Loader "
                                "(S2V and native MODEL inputs are not supported).")
        path = c.resolve_model("loras", lora, what="LoRA")
        spec = LoraSpec(path=path, strength=float(strength), apply_to=apply_to)
        expert_indices(len(model.experts), apply_to)  # checks apply_to before touching weights
        merged: dict[str, LoraSpec] = model.__dict__.setdefault("wanmeter_lora_nodes", {})
        key = str(unique_id) if unique_id is not None else f"anon{len(merged)}"
        if merged.get(key) == spec:
            return (model,)
        _check_expert_hint(lora, apply_to, len(model.experts))
        experts = list(model.experts)
        _unplace(model)
        old = merged.get(key)
        todo = []
        if old is not None:  # this node ran before on the same model: take its LoRA out first
            todo.append(LoraSpec(old.path, -old.strength, old.apply_to))
        if strength != 0:
            todo.append(spec)
        try:
            # one atomic merge: taking the old LoRA out and putting the new one in are validated
            # together, so a bad LoRA leaves the (upstream-cached) model exactly as it was
            merge_loras(experts, todo)
        except BaseException:
            c.release_memory()
            raise
        merged.pop(key, None)
        merged[key] = spec
        src = getattr(model, "wanmeter_source", None)
        if src is not None:
            from dataclasses import replace

            model.wanmeter_source = replace(src, loras=tuple(merged.values()))
        return (model,)


def _check_expert_hint(lora: str, apply_to: str, experts: int) -> None:
    """A14B LoRAs come as a high-noise and a low-noise file (lightx2v `..._HIGH_...`, kijai
    `..._high_noise_...`): refuse the one that names the other expert than apply_to."""
    from ..wanmeter.accel import lora_expert_hint

    hint = lora_expert_hint(lora)
    if experts < 2 or hint is None or apply_to == "both":
        return
    if apply_to != f"{hint}_noise":
        raise WanMeterError(f"{lora} is named for the {hint}-noise expert but apply_to is {apply_to}. Set apply_to to "
                            f"{hint}_noise (and load the {'low' if hint == 'high' else 'high'}-noise LoRA file in a "
                            "second WanMeter LoRA node for the other expert).")


def _lora_files() -> list[str]:
    try:
        return c.list_models("loras")
    except KeyError:  # a folder_paths without "loras" (never in ComfyUI; minimal stubs)
        return []


def _unplace(model) -> None:
    """Undo the runtime placement (fast paths, streaming hooks) so the merge sees plain weights;
    the sampler places the model again on its next run."""
    try:
        model.set_runtime(model.runtime)
    except WanMeterError:
        raise
    except Exception:
        pass


NODE_CLASS_MAPPINGS = {"WanMeterLoRA": WanMeterLoRA}
NODE_DISPLAY_NAME_MAPPINGS = c.display_names("WanMeterLoRA")
