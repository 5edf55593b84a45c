"""Small stand-ins for ComfyUI's folder_paths / comfy.* / server modules, and an importer for
the pack root as a package, so the node modules are tested without ComfyUI.

The stubs follow ComfyUI 0.3.64's signatures for the few functions the nodes call.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "wanmeter_pack"

SUPPORTED = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class InterruptProcessingException(Exception):
    pass


def make_stubs(models_dir: Path) -> dict[str, types.ModuleType]:
    """folder_paths over `models_dir/<folder>`, comfy.model_management (CPU), comfy.utils, server."""
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {
        name: ([str(models_dir / name)], set(SUPPORTED))
        for name in ("diffusion_models", "text_encoders", "vae", "audio_encoders")
    }

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_filename_list(name):
        out = set()
        folders, exts = fp.folder_names_and_paths[name]
        for base in folders:
            for dirpath, _dirs, files in os.walk(base):
                for f in files:
                    rel = os.path.relpath(os.path.join(dirpath, f), base)
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.add(rel)
        return sorted(out)

    def get_full_path(name, filename):
        if name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for base in fp.folder_names_and_paths[name][0]:
            p = os.path.join(base, filename)
            if os.path.isfile(p):
                return p
        return None

    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = types.ModuleType("comfy.model_management")
    mm.calls = []
    mm.interrupt = False
    mm.InterruptProcessingException = InterruptProcessingException

    def get_torch_device():
        import torch

        return torch.device("cpu")

    def throw_exception_if_processing_interrupted():
        if mm.interrupt:
            mm.interrupt = False
            raise InterruptProcessingException()

    mm.get_torch_device = get_torch_device
    mm.unload_all_models = lambda: mm.calls.append("unload_all_models")
    mm.soft_empty_cache = lambda force=False: mm.calls.append("soft_empty_cache")
    mm.free_memory = lambda memory_required, device, keep_loaded=[]: mm.calls.append("free_memory")
    mm.get_free_memory = lambda dev=None, torch_free_too=False: 8 * 1024**3
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        instances: list = []

        def __init__(self, total, node_id=None):
            self.total, self.node_id, self.updates = total, node_id, []
            ProgressBar.instances.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, total))

    utils.ProgressBar = ProgressBar
    comfy.model_management = mm
    comfy.utils = utils

    server = types.ModuleType("server")

    class PromptServer:
        instance = None

    server.PromptServer = PromptServer
    return {"folder_paths": fp, "comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils,
            "server": server}


def import_pack(name: str = PACK):
    """Import the repo root as a package (as ComfyUI does with the folder); fresh each call."""
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
