#!/usr/bin/env python3
"""Write wanmeter/data/official_keys/<variant>.json = {state-dict key: shape} from the official code.

Why: the loader and the tiny fixtures must use exactly the key names of the released Wan2.2
checkpoints. Instead of trusting our own list, we build the official `WanModel` (and
`WanModel_S2V`) from a reference checkout on the meta device (no memory, no weights) and dump
its state-dict layout. Only the resulting facts are committed, never the reference code.

Usage:  WANMETER_WAN22_REF=/path/to/Wan2.2 python tools/dump_official_keys.py [--check]
(--check compares with the committed JSONs instead of writing them.)
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parents[1] / "wanmeter" / "data" / "official_keys"

# Per-variant checkpoint fields that live in the released config.json files (not in
# wan/configs/*.py): model_type and the in/out channel counts.
CHECKPOINT_FIELDS = {
    "t2v_a14b": ("wan_t2v_A14B", "t2v_A14B", {"model_type": "t2v", "in_dim": 16, "out_dim": 16}),
    "i2v_a14b": ("wan_i2v_A14B", "i2v_A14B", {"model_type": "i2v", "in_dim": 36, "out_dim": 16}),
    "ti2v_5b": ("wan_ti2v_5B", "ti2v_5B", {"model_type": "ti2v", "in_dim": 48, "out_dim": 48}),
}
ARCH_FIELDS = ("patch_size", "dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "window_size",
               "qk_norm", "cross_attn_norm", "eps")


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def _unavailable(*_a, **_k):
    raise RuntimeError("stubbed in tools/dump_official_keys.py: only module construction is supported")


def _missing(name: str) -> bool:
    return name not in sys.modules and importlib.util.find_spec(name) is None


def prepare_imports(ref: Path) -> None:
    """Make `wan.modules.model` etc. importable without running the package __init__ files
    (they pull in flash_attn, librosa, easydict and the whole pipeline stack)."""
    for pkg, sub in (("wan", ""), ("wan.modules", "modules"), ("wan.modules.s2v", "modules/s2v"),
                     ("wan.distributed", "distributed"), ("wan.configs", "configs")):
        if pkg in sys.modules:  # already importable (a real checkout on sys.path, or stubbed before)
            continue
        m = _stub(pkg)
        m.__path__ = [str(ref / "wan" / sub) if sub else str(ref / "wan")]  # type: ignore[attr-defined]
    if _missing("einops"):
        _stub("einops", rearrange=_unavailable, repeat=_unavailable)
    if _missing("easydict"):
        class EasyDict(dict):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)

            def __getattr__(self, k):
                try:
                    return self[k]
                except KeyError:
                    raise AttributeError(k) from None

            def __setattr__(self, k, v):
                self[k] = v

        _stub("easydict", EasyDict=EasyDict)


def _layout(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def build_layouts(ref: Path) -> dict[str, dict[str, list[int]]]:
    prepare_imports(ref)
    model_mod = importlib.import_module("wan.modules.model")
    layouts: dict[str, dict[str, list[int]]] = {}
    for variant, (cfg_mod, cfg_name, fields) in CHECKPOINT_FIELDS.items():
        cfg = getattr(importlib.import_module(f"wan.configs.{cfg_mod}"), cfg_name)
        kwargs = {k: cfg[k] for k in ARCH_FIELDS}
        kwargs.update(fields)
        with torch.device("meta"):
            model = model_mod.WanModel(**kwargs)
        layouts[variant] = _layout(model)
    try:
        s2v_mod = importlib.import_module("wan.modules.s2v.model_s2v")
        cfg = importlib.import_module("wan.configs.wan_s2v_14B").s2v_14B
        kwargs = dict(cfg["transformer"])
        kwargs.pop("__name__", None)
        with torch.device("meta"):
            model = s2v_mod.WanModel_S2V(**kwargs)
        layouts["s2v_14b"] = _layout(model)
    except Exception as e:  # the S2V model pulls in more of the reference tree; report, do not hide
        print(f"warning: could not build WanModel_S2V: {type(e).__name__}: {e}", file=sys.stderr)
    return layouts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default=os.environ.get("WANMETER_WAN22_REF"), help="official Wan2.2 checkout")
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = ap.parse_args()
    if not args.ref or not (Path(args.ref) / "wan").is_dir():
        print("set WANMETER_WAN22_REF (or --ref) to a checkout of Wan-Video/Wan2.2", file=sys.stderr)
        return 2
    layouts = build_layouts(Path(args.ref))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rc = 0
    for variant, layout in layouts.items():
        path = OUT_DIR / f"{variant}.json"
        # one key per line: readable diffs when the reference changes
        text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(layout.items())) + "\n}\n"
        if args.check:
            same = path.is_file() and json.loads(path.read_text()) == json.loads(text)
            print(f"{variant}: {len(layout)} keys, {'matches' if same else 'DIFFERS from'} {path.name}")
            rc |= 0 if same else 1
        else:
            path.write_text(text)
            print(f"{variant}: {len(layout)} keys -> {path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
