"""Deterministic tiny random models, generated on first use into a cache folder.

Why a registry: each area (DiT, text encoder, VAE, S2V, audio) owns the generator for its own
fixtures, and every test/demo asks for all of them through one call. A generator module in this
package registers its entries at import time; `ensure_tiny_models` imports every module of the
package, so adding a fixture needs no edit here:

    # wanmeter/tiny/umt5.py
    from . import register
    def _write(dest: Path) -> None: ...            # write exactly `dest` (a file or a folder)
    register("umt5_fp16", _write, "text_encoders/tiny_umt5_xxl_fp16.safetensors")

Writes go to a temporary name first and are renamed into place, so an interrupted run never
leaves a half-written fixture. Bump `version` when a generator's output changes: entries whose
recorded version differs are regenerated.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / ".cache" / "tiny"
_MANIFEST = "manifest.json"
_SKIP_MODULES = {"spec"}


@dataclass(frozen=True)
class Entry:
    name: str
    write: Callable[[Path], None]   # writes exactly the destination path it is given
    relpath: str                    # where the fixture lives under the root
    version: str = "1"
    requires: tuple[str, ...] = ()  # entries that must exist first (e.g. an fp8 copy of an fp16 file)


_REGISTRY: dict[str, Entry] = {}


def register(name: str, write: Callable[[Path], None], relpath: str, *, version: str = "1",
             requires: Iterable[str] = ()) -> None:
    """Register a tiny fixture: `write(dest)` creates the file or folder `root/relpath`.

    A generator that needs another fixture calls `ensure_tiny_models(names=[...])` itself, or
    lists it in `requires` and receives nothing extra (it can find it with `tiny_path`).
    """
    if name in _REGISTRY and _REGISTRY[name].write is not write:
        raise ValueError(f"tiny fixture {name!r} is registered twice")
    _REGISTRY[name] = Entry(name, write, relpath, version, tuple(requires))


def _load_generators() -> None:
    for mod in pkgutil.iter_modules(__path__):  # type: ignore[name-defined]
        if mod.name not in _SKIP_MODULES and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def registered() -> dict[str, Entry]:
    """All known fixtures (after importing every generator module)."""
    _load_generators()
    return dict(_REGISTRY)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The cache root: the argument, else $WANMETER_TINY_ROOT, else <repo>/.cache/tiny."""
    return Path(root or os.environ.get("WANMETER_TINY_ROOT") or DEFAULT_ROOT)


def tiny_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where fixture `name` lives (without generating it)."""
    return resolve_root(root) / registered()[name].relpath


def _read_manifest(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _write_manifest(root: Path, manifest: dict[str, str]) -> None:
    tmp = root / f".{_MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, root / _MANIFEST)


def _generate(entry: Entry, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        tmp = tmpdir / dest.name
        entry.write(tmp)
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def ensure_tiny_models(root: str | os.PathLike | None = None, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Generate missing or outdated tiny fixtures and return {name: path} for all (or `names`)."""
    base = resolve_root(root)
    base.mkdir(parents=True, exist_ok=True)
    reg = registered()
    wanted = list(reg) if names is None else list(names)
    unknown = [n for n in wanted if n not in reg]
    if unknown:
        raise KeyError(f"unknown tiny fixtures {unknown}; known: {sorted(reg)}")
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        for dep in reg[n].requires:
            visit(dep)
        order.append(n)

    for n in wanted:
        visit(n)
    manifest = _read_manifest(base)
    changed = False
    for n in order:
        e = reg[n]
        dest = base / e.relpath
        if not dest.exists() or manifest.get(n) != e.version:
            _generate(e, dest)
            manifest[n] = e.version
            changed = True
    if changed:
        _write_manifest(base, {**_read_manifest(base), **{n: reg[n].version for n in order}})
    return {n: base / reg[n].relpath for n in wanted}
