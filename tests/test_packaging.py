"""Packaging for the Comfy registry: pyproject metadata, requirements that never bring a torch, and
`comfy node validate` (when comfy-cli is installed)."""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_requirements_bring_no_torch():
    """ComfyUI's venv has its torch (often a CUDA build): the pack must not ask pip for another one.
    (tools/e2e.sh also dry-runs `pip install -r requirements.txt` in ComfyUI's venv and refuses any
    torch/torchvision/torchaudio it would install.)"""
    names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in _requirements()]
    assert not {"torch", "torchvision", "torchaudio"} & set(names), names


def test_pyproject_dependencies_are_the_requirements():
    assert _pyproject()["project"]["dependencies"] == _requirements()


def test_registry_metadata():
    p = _pyproject()
    proj, comfy = p["project"], p["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,98}", proj["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", proj["version"])
    assert proj["description"] and proj["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert proj["urls"]["Repository"].startswith("https://github.com/")
    assert {"Homepage", "Documentation", "Issues"} <= set(proj["urls"])  # the keys comfy-cli reads
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    # The classifier values the registry accepts (comfy-cli's config parser).
    for c in proj["classifiers"]:
        assert c.startswith("Operating System :: ") or c in (
            "Environment :: GPU :: NVIDIA CUDA", "Environment :: GPU :: AMD ROCm", "Environment :: GPU :: Intel Arc",
            "Environment :: NPU :: Huawei Ascend", "Environment :: GPU :: Apple Metal"), c


def test_comfy_node_validate():
    comfy = shutil.which("comfy")
    if comfy is None:
        pytest.skip("comfy-cli is not installed (pip install comfy-cli, in a venv)")
    r = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Warning" not in out and "passed" in out, out
