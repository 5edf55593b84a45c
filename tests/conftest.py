"""Shared fixtures: the tiny models are generated once per session into .cache/tiny."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Test modules share helpers through tests/wm_testutil.py (importlib mode gives them no package).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def wan22_ref() -> Path:
    """Path of an official Wan2.2 checkout (WANMETER_WAN22_REF), or skip."""
    p = os.environ.get("WANMETER_WAN22_REF")
    if not p or not (Path(p) / "wan").is_dir():
        pytest.skip("set WANMETER_WAN22_REF to a checkout of Wan-Video/Wan2.2 to run reference-parity tests")
    return Path(p)
