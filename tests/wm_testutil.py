"""Helpers shared by test modules.

The suite runs with --import-mode=importlib, so test files cannot import each other by name;
conftest.py puts this folder on sys.path so that this one module can be imported everywhere.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parent


def load_module(name: str, file: str) -> ModuleType:
    """Import tests/<file> once as module `name` (cached in sys.modules, so state is shared)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def s2v_support() -> ModuleType:
    """tests/test_s2v_support.py: the official-code harness and the fast stand-in VAE."""
    return load_module("wanmeter_s2v_test_support", "test_s2v_support.py")
