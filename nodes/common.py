"""Helpers shared by the node modules: model-folder listings, safe file resolution, type names.

Everything from ComfyUI (folder_paths, comfy.*) is imported inside functions, so the node
modules import without ComfyUI (the tests inject small stubs instead).
"""
from __future__ import annotations

import os
from typing import Any

from ..wanmeter import schema
from ..wanmeter.errors import WanMeterError

CATEGORY = "WanMeter"

# Custom types that only our nodes produce and consume.
WANMETER_MODEL = "WANMETER_MODEL"
WANMETER_TEXT_ENCODER = "WANMETER_TEXT_ENCODER"
WANMETER_VAE = "WANMETER_VAE"

NONE_CHOICE = "none"

# Choices of the static combos live in wanmeter/data/node_schema.json; these names stay for the code
# that checks values against them.
SCHEDULERS = list(schema.widget("WanMeterSampler", "scheduler")["choices"])
STEP_CACHES = list(schema.widget("WanMeterSampler", "step_cache")["choices"])
LORA_TARGETS = list(schema.widget("WanMeterLoRA", "apply_to")["choices"])

# folder_paths keys: the native ones, plus one of ours listing GGUF files in the same folders
# (ComfyUI's diffusion_models list only knows .safetensors/.ckpt/...).
_GGUF_KEY = "wanmeter_diffusion_models_gguf"

# Folders a name sent by the browser may be resolved in (the estimate route).
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "audio_encoders")


def _folder_paths():
    import folder_paths  # ComfyUI's module; lazy so tests can stub it

    return folder_paths


def _ensure_gguf_key(fp) -> None:
    if _GGUF_KEY not in fp.folder_names_and_paths:
        fp.folder_names_and_paths[_GGUF_KEY] = (fp.get_folder_paths("diffusion_models"), {".gguf"})


def combo_choices(source: str) -> list[str]:
    """Values of a dynamic combo named in node_schema.json's `choices_from`."""
    if source.startswith("models:"):
        folder, _, extra = source[len("models:"):].partition("+")
        files = list_models(folder)
        return ([NONE_CHOICE] + files) if extra == "none" else files
    if source == "gpus":
        from .estimate_adapter import gpu_choices

        return gpu_choices()
    if source == "attention":
        from ..wanmeter.attention_kernels import node_choices

        return node_choices()
    raise WanMeterError(f"node_schema.json: unknown choices_from {source!r}.")


def input_types(node_type: str) -> dict[str, Any]:
    """INPUT_TYPES of one of our nodes, from its one declaration (wanmeter/data/node_schema.json)."""
    return schema.input_types(node_type, combo_choices)


def display_names(*node_types: str) -> dict[str, str]:
    return {t: schema.display_name(t) for t in node_types}


def list_models(folder: str) -> list[str]:
    """Files ComfyUI lists for a model folder (subfolders included); diffusion models add .gguf."""
    fp = _folder_paths()
    names = set(fp.get_filename_list(folder))
    if folder == "diffusion_models":
        try:
            _ensure_gguf_key(fp)
            names.update(fp.get_filename_list(_GGUF_KEY))
        except Exception:  # an old/odd folder_paths: GGUF just does not show up
            pass
    return sorted(names)


def check_name(name: str) -> str:
    """Reject names that could escape the model folders ('..', absolute paths, drive letters).

    Subfolders are allowed in the form ComfyUI lists them ('wan/x.safetensors'); resolve_model
    then checks that the resolved path really lies inside one of the folder's directories.
    """
    if not isinstance(name, str) or not name or len(name) > 512:
        raise WanMeterError("Model file name is missing or too long. Pick a file from the list.")
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or ".." in parts or ":" in name or "\x00" in name or any(p in ("", ".") for p in parts):
        raise WanMeterError(
            f"Model file name {name!r} is not a plain name inside a models folder. "
            "Pick a file from the node's list."
        )
    return name


def inside(path: str, folders: list[str]) -> bool:
    """True when `path` (made absolute, '..' collapsed) lies inside one of `folders`.

    Lexical on purpose: a symlink the user put *in* a model folder (models on another disk) is
    theirs to follow, as ComfyUI does; what a name from the browser cannot do is walk out."""
    p = os.path.abspath(path)
    for f in folders:
        base = os.path.abspath(f)
        try:
            if os.path.commonpath([p, base]) == base and p != base:
                return True
        except ValueError:  # different drives (Windows)
            continue
    return False


def resolve_model(folder: str, name: str, *, what: str = "model") -> str:
    """Full path of a model file inside a model folder (subfolders included), or a WanMeterError
    naming the folder to put it in. The path is resolved, then checked to lie inside the folder's
    directories, and must be a regular file (no FIFO, device or directory is ever opened)."""
    import stat

    check_name(name)
    fp = _folder_paths()
    path = fp.get_full_path(folder, name)
    if path is None and folder == "diffusion_models" and name.lower().endswith(".gguf"):
        _ensure_gguf_key(fp)
        path = fp.get_full_path(_GGUF_KEY, name)
    folders = list(fp.get_folder_paths(folder)) if hasattr(fp, "get_folder_paths") else []
    if path is not None and not inside(path, folders):
        raise WanMeterError(f"Model file name {name!r} resolves outside ComfyUI's '{folder}' folder. "
                            "Pick a file from the node's list.")
    try:
        regular = path is not None and stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, a symlink loop, a name the OS refuses
        regular = False
    if not regular:
        where = ", ".join(folders) or folder
        raise WanMeterError(
            f"The {what} file {name!r} was not found in ComfyUI's '{folder}' folder ({where}) as a regular file. "
            "Download it into that folder, or pick another file in the node."
        )
    return path


# The loader nodes whose files must belong together: class_type -> [(model folder, input, check_parts keyword)].
PART_INPUTS = {
    "WanMeterModelLoader": (("diffusion_models", "model", "dit"), ("diffusion_models", "model_low_noise", "dit")),
    "WanMeterVAELoader": (("vae", "vae", "vae"),),
    "WanMeterTextEncoderLoader": (("text_encoders", "text_encoder", "text_encoder"),),
    "WanMeterS2VAudio": (("audio_encoders", "audio_encoder", "audio_encoder"),),
}


def check_prompt_parts(prompt: Any) -> None:
    """Called by each loader node (hidden input PROMPT) before it loads a weight: the diffusion
    model, VAE, text encoder and audio encoder picked in the queued prompt belong together,
    judged from their headers (wanmeter.loader.parts.check_parts). So a wrong VAE is refused
    before the 14B experts load, whichever loader ComfyUI runs first.

    Skipped where the pairing is unknown: no prompt, several loaders of one kind, a linked
    input, or a name that does not resolve (the node itself then says what is wrong)."""
    if not isinstance(prompt, dict):
        return
    found: dict[str, list[str]] = {}
    nodes = [n for n in prompt.values() if isinstance(n, dict) and n.get("class_type") in PART_INPUTS]
    kinds = [n["class_type"] for n in nodes]
    if any(kinds.count(k) > 1 for k in kinds):
        return
    for node in nodes:
        inputs = node.get("inputs") or {}
        for folder, name, kw in PART_INPUTS[node["class_type"]]:
            v = inputs.get(name)
            if not isinstance(v, str) or is_none(v):
                if name == "model":
                    return  # a linked / missing model: nothing to pair with
                continue
            try:
                found.setdefault(kw, []).append(resolve_model(folder, v))
            except WanMeterError:
                return
    if "dit" not in found or (len(found) < 2 and len(found["dit"]) < 2):
        return
    from ..wanmeter.loader.parts import check_parts

    check_parts(found["dit"], **{k: v[0] for k, v in found.items() if k != "dit"})


def is_none(name: Any) -> bool:
    return name is None or name == "" or name == NONE_CHOICE


def comfy_device():
    """ComfyUI's main torch device (the GPU it was started for; CPU with --cpu)."""
    import comfy.model_management as mm

    return mm.get_torch_device()


def free_comfy_memory() -> None:
    """Ask ComfyUI to move its own models out of VRAM before we load a big one.

    Our modules are not ModelPatchers, so ComfyUI cannot evict them; we make room for them
    instead, the way native loaders do before a large allocation.
    """
    import gc

    import comfy.model_management as mm

    gc.collect()
    mm.unload_all_models()
    mm.soft_empty_cache()


def release_memory() -> None:
    """Return freed allocator blocks to the driver (after errors or interruption)."""
    import gc

    gc.collect()
    try:
        import comfy.model_management as mm

        mm.soft_empty_cache()
    except Exception:
        pass


def check_interrupt() -> None:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
