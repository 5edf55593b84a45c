"""Files -> torch modules. DiT: inspect_dit / load_dit / load_expert_pair (headers first, then a strict, lean load)."""
from .dit_inspect import DiTInfo, find_expert_folders, inspect_dit, inspect_gguf
from .dit_loader import (
    WEIGHT_DTYPES,
    LoadedDiT,
    build_empty_transformer,
    check_expert_pair,
    iter_official_tensors,
    load_dit,
    load_expert_pair,
    parse_dtype,
)

__all__ = [
    "DiTInfo", "LoadedDiT", "WEIGHT_DTYPES", "build_empty_transformer", "check_expert_pair",
    "find_expert_folders", "inspect_dit", "inspect_gguf", "iter_official_tensors", "load_dit",
    "load_expert_pair", "parse_dtype",
]
