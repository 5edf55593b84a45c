"""JSON from untrusted bytes (HTTP bodies, safetensors headers) without RecursionError.

Python's json recurses once per nesting level, so a 16 KB body or a safetensors header nested a
few thousand deep raises RecursionError (or, just under the limit, breaks whatever walks the
result next). The depth is measured first, on the raw bytes, with two regular expressions.
"""
from __future__ import annotations

import re

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes | str) -> int:
    """Deepest [ / { nesting of a JSON text, brackets inside strings ignored."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest
