"""Placement of the DiT expert(s): precision, attention backend, offload mode.

Three offload modes (see RuntimeOptions):
- "none": every expert lives on the compute device the whole time.
- "model": only the expert in use is on the device; the other waits in CPU memory. Experts are
  swapped when the sampler crosses the MoE boundary (one swap per run for A14B). Moving with
  `.to()` rather than keeping a CPU master copy keeps host RAM at one expert's size, which is
  what users run out of first (peers.md).
- "blocks": as "model", and the last N transformer blocks of the active expert stay in pinned
  CPU memory and are streamed in with diffusers' group-offloading hooks on a side CUDA stream,
  each block prefetched while the previous one computes. For N < all blocks we build diffusers'
  `ModuleGroup`/`GroupOffloadingHook` objects for just those blocks and chain their prefetch
  ourselves (the public `apply_group_offloading` only takes whole ModuleLists); the resident
  block before the first streamed one triggers its prefetch. For N == all blocks we call the
  public `apply_group_offloading(block_level, num_blocks_per_group=1, use_stream=True)`, which
  also offloads the embeddings and the head.
On CPU the same hooks are installed without a stream (onload/offload are no-ops), so the tests
exercise every code path.

Pinned swap (RuntimeOptions.pinned_swap, with "model"/"blocks"): each expert's resident tensors
get a page-locked CPU master copy that lives as long as the placement (`_PinnedParking`). Bringing
an expert in is one DMA copy per tensor from the master (no pageable staging); sending it out drops
the device copy and points the parameters back at the master, with no copy at all when the device
tensors are the ones we copied in (the runtime never edits weights in place on the device: LoRA
merges run after `teardown()`, and fast paths that replace tensors make them "new", which are
copied out once). Measured on an H200 (bench/swap_compile_load.py): see calibration.json
`swap.*`. Costs: both experts' bytes stay in pinned RAM (the pageable path holds the same bytes,
pageable), in 256 MiB chunks (torch's pinned allocator rounds each allocation up to a power of
two, so one tensor per allocation would waste up to half). On a CPU device the same code runs with
ordinary memory (the "device" copy is a clone), which is what the tests exercise.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from diffusers.hooks import ModelHook
from torch import nn

from ..errors import WanMeterError
from .attention import apply_attention
from .options import RuntimeOptions, parse_dtype
from .memory import enable_expandable_segments

_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
_GROUP_HOOK = "group_offloading"
_PREFETCH_HOOK = "wanmeter_prefetch_trigger"
_CPU = torch.device("cpu")


def weights_dtype(model: nn.Module) -> torch.dtype:
    """Storage dtype of the bulk of the weights (by element count), not of the fp32-kept norms."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get)


def _layerwise_compute_dtype(model: nn.Module) -> torch.dtype | None:
    """The compute dtype of diffusers' layerwise-casting hooks already on `model`, if any."""
    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        hook = reg.get_hook("layerwise_casting") if reg is not None else None
        if hook is not None:
            return hook.compute_dtype
    return None


def apply_precision(model: nn.Module, compute: torch.dtype | None) -> torch.dtype:
    """Make `model` compute in `compute` (None: its weights' dtype; bf16 for fp8 weights).

    fp8-stored weights get diffusers' layerwise casting (weights stay fp8 in memory, each layer
    is upcast just for its matmul) unless the loader already installed it; float weights of
    another dtype are cast once.
    """
    q_compute = getattr(getattr(model, "hf_quantizer", None), "compute_dtype", None)
    if getattr(model, "is_quantized", False) and q_compute is not None:
        # GGUF: weights stay quantized and are dequantized per layer to the loader's compute dtype
        if compute not in (None, q_compute):
            raise WanMeterError(f"This GGUF model computes in {str(q_compute).replace('torch.', '')} (set when it was "
                                "loaded); leave compute_dtype empty or load it with that compute dtype.")
        return q_compute
    wd = weights_dtype(model)
    if wd in _FP8:
        hooked = _layerwise_compute_dtype(model)
        if hooked is not None:
            if compute is not None and compute != hooked:
                raise WanMeterError(
                    f"This DiT was loaded to compute in {str(hooked).replace('torch.', '')}; load it again with "
                    f"compute_dtype={str(compute).replace('torch.', '')} instead of changing it at placement."
                )
            return hooked
        compute = compute or torch.bfloat16
        model.enable_layerwise_casting(storage_dtype=wd, compute_dtype=compute)
        return compute
    if compute is None or compute == wd:
        return wd
    model.to(dtype=compute)
    return compute


class _PrefetchTrigger(ModelHook):
    """Hook on the last resident block: starts copying the first streamed block to the device."""

    _is_stateful = False

    def __init__(self, group) -> None:
        super().__init__()
        self.group = group

    def pre_forward(self, module, *args, **kwargs):
        self.group.onload_()
        return args, kwargs


def _stream_blocks(model: nn.Module, n: int, device: torch.device, record_stream: bool) -> set[int]:
    """Install streaming hooks on the last `n` blocks of `model` (on CPU); returns their indices."""
    from diffusers.hooks import HookRegistry, apply_group_offloading
    from diffusers.hooks.group_offloading import (
        GroupOffloadingConfig,
        GroupOffloadingHook,
        GroupOffloadingType,
        ModuleGroup,
    )

    blocks = model.blocks
    total = len(blocks)
    if n > total:
        raise WanMeterError(
            f"blocks_to_stream={n} but this DiT has {total} blocks; use a value from 1 to {total}."
        )
    use_stream = device.type == "cuda"
    if n == total:
        apply_group_offloading(
            model, onload_device=device, offload_device=_CPU, offload_type="block_level",
            num_blocks_per_group=1, use_stream=use_stream, record_stream=record_stream and use_stream,
        )
        if use_stream:
            _drop_pageable_copies(model)
        return set(range(total))

    stream = torch.cuda.Stream(device=device) if use_stream else None
    config = GroupOffloadingConfig(
        onload_device=device, offload_device=_CPU, offload_type=GroupOffloadingType.BLOCK_LEVEL,
        non_blocking=use_stream, record_stream=record_stream and use_stream, low_cpu_mem_usage=False,
        num_blocks_per_group=1, stream=stream,
    )
    first = total - n
    groups, hooks = [], []
    for i in range(first, total):
        group = ModuleGroup(
            modules=[blocks[i]], offload_device=_CPU, onload_device=device,
            offload_leader=blocks[i], onload_leader=blocks[i], non_blocking=use_stream,
            stream=stream, record_stream=config.record_stream, onload_self=True,
            group_id=f"blocks_{i}",
        )
        hook = GroupOffloadingHook(group, config=config)
        HookRegistry.check_if_exists_or_initialize(blocks[i]).register_hook(hook, _GROUP_HOOK)
        groups.append(group)
        hooks.append(hook)
    if use_stream:
        # block k prefetches block k+1 while it computes; the resident block before the first
        # streamed one prefetches that one.
        for hook, nxt in zip(hooks[:-1], groups[1:]):
            hook.next_group = nxt
            nxt.onload_self = False
        groups[0].onload_self = False
        HookRegistry.check_if_exists_or_initialize(blocks[first - 1]).register_hook(
            _PrefetchTrigger(groups[0]), _PREFETCH_HOOK
        )
        _drop_pageable_copies(model)
    return set(range(first, total))


def _drop_pageable_copies(model: nn.Module) -> None:
    """diffusers pins a copy of every streamed tensor when a group is built but leaves the parameter
    on its pageable original until the first offload; point the parameters at the pinned copies now,
    so host RAM holds the streamed blocks once, not twice (bounded pinned memory, issue: RAM crashes)."""
    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        hook = reg.get_hook(_GROUP_HOOK) if reg is not None else None
        if hook is not None and hook.group.offload_leader is m and hook.group.stream is not None:
            hook.group.offload_()


def _remove_streaming(model: nn.Module) -> None:
    from diffusers.hooks import HookRegistry

    reg = HookRegistry.check_if_exists_or_initialize(model)
    for name in (_GROUP_HOOK, "layer_execution_tracker", "lazy_prefetch_group_offloading", _PREFETCH_HOOK):
        reg.remove_hook(name, recurse=True)


def _offload_streamed_groups(model: nn.Module) -> None:
    """After an exception mid-forward: send any streamed block that is still onloaded back."""
    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        hook = reg.get_hook(_GROUP_HOOK) if reg is not None else None
        if hook is None or hook.group.offload_leader is not m:
            continue
        params = [p for mod in hook.group.modules for p in mod.parameters()] + list(hook.group.parameters)
        if params and params[0].device != hook.group.offload_device:
            hook.group.offload_()


def _resident_slots(model: nn.Module, streamed: set[int], all_streamed: bool) -> list[tuple]:
    """(key, module, kind, name) of every parameter ("p") / buffer ("b") not streamed by hooks."""
    if all_streamed:
        return []
    skip = tuple(f"blocks.{i}" for i in streamed)
    out = []
    for mname, module in model.named_modules():
        if skip and any(mname == s or mname.startswith(s + ".") for s in skip):
            continue
        for n, p in module._parameters.items():
            if p is not None:
                out.append((f"{mname}.{n}", module, "p", n))
        for n, b in module._buffers.items():
            if b is not None:
                out.append((f"{mname}.{n}", module, "b", n))
    return out


def _slot_get(module: nn.Module, kind: str, name: str) -> torch.Tensor:
    t = module._parameters[name] if kind == "p" else module._buffers[name]
    return t.data if kind == "p" else t


def _slot_set(module: nn.Module, kind: str, name: str, t: torch.Tensor) -> None:
    if kind == "p":
        module._parameters[name].data = t   # keeps the Parameter object (hooks and optimizers hold it)
    else:
        module._buffers[name] = t


def _move_resident(model: nn.Module, device: torch.device, streamed: set[int], all_streamed: bool) -> None:
    """Move every parameter/buffer that is not streamed by hooks to `device` (keeps Parameter identity)."""
    for _key, module, kind, name in _resident_slots(model, streamed, all_streamed):
        t = _slot_get(module, kind, name)
        if t.device != device:
            _slot_set(module, kind, name, t.to(device))


_CHUNK = 1 << 30    # pinned chunk: a power of two, so torch's pinned allocator wastes nothing and reuses it
_ALIGN = 512


def _layerwise_cast(module: nn.Module) -> bool:
    reg = getattr(module, "_diffusers_hook", None)
    return reg is not None and reg.get_hook("layerwise_casting") is not None


def _host_empty_cache() -> None:
    """Give cached, unused pinned blocks back to the OS (torch keeps freed pinned memory cached)."""
    fn = getattr(torch._C, "_host_emptyCache", None)
    if fn is not None and torch.cuda.is_available():
        fn()


class _PinnedParking:
    """Page-locked CPU master copies of one expert's resident tensors (see the module doc).

    pin=False (a CPU compute device) uses ordinary memory and clones on "onload", so CPU tests run
    the same bookkeeping. Tensors are packed first-fit-decreasing into 1 GiB chunks.
    """

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.masters: dict[str, torch.Tensor] = {}
        self.onloaded: dict[str, tuple] = {}
        self.pinned_bytes = 0      # bytes of the chunks holding the masters
        self.copies_out = 0        # device -> master copies made (0 after the first park when nothing changed)

    def _chunk(self, n: int) -> torch.Tensor:
        self.pinned_bytes += n
        return torch.empty(n, dtype=torch.uint8, pin_memory=self.pin)

    def _pack(self, tensors: list[torch.Tensor]) -> list[tuple[int, list[tuple[int, int]]]]:
        """First-fit-decreasing packing: [(chunk bytes, [(tensor index, byte offset), ...]), ...]."""
        sizes = [t.numel() * t.element_size() for t in tensors]
        order = sorted(range(len(tensors)), key=lambda i: -sizes[i])
        total = sum(-(-n // _ALIGN) * _ALIGN for n in sizes)
        chunk = min(_CHUNK, 1 << max(total - 1, 1).bit_length())   # small models: one chunk of their size
        chunks: list[list] = []          # [chunk bytes, used bytes, members]
        for i in order:
            n = sizes[i]
            padded = -(-n // _ALIGN) * _ALIGN
            if n > chunk:
                chunks.append([n, n, [(i, 0)]])
                continue
            slot = next((c for c in chunks if c[0] == chunk and c[1] + padded <= chunk), None)
            if slot is None:
                slot = [chunk, 0, []]
                chunks.append(slot)
            slot[2].append((i, slot[1]))
            slot[1] += padded
        return [(c[0], c[2]) for c in chunks]

    def _is_current(self, key: str, t: torch.Tensor, module: nn.Module | None = None) -> bool:
        """Is `t` the master itself, or the device copy we made of it (so the master is up to date)?"""
        m = self.masters.get(key)
        if m is None:
            return False
        if t.device.type == "cpu" and t.data_ptr() == m.data_ptr() and t.shape == m.shape and t.dtype == m.dtype:
            return True
        rec = self.onloaded.get(key)
        if rec is None:
            return False
        if rec == (t.data_ptr(), str(t.device), t.dtype, tuple(t.shape)):
            return True
        # diffusers' layerwise casting re-creates each weight at every forward (storage -> compute -> storage
        # dtype, exact for fp8 values), so a new tensor of the same dtype and shape still equals the master.
        return module is not None and _layerwise_cast(module) and rec[1:] == (str(t.device), t.dtype, tuple(t.shape))

    def offload(self, slots: list[tuple]) -> None:
        """Point every slot at its master; copy out only when some tensor is new or was replaced."""
        current = [(s, _slot_get(*s[1:])) for s in slots]
        if current and all(self._is_current(s[0], t, s[1]) for s, t in current):
            for s, _t in current:
                _slot_set(*s[1:], self.masters[s[0]])
            return
        self._repark(current)

    def _repark(self, current: list[tuple]) -> None:
        # drop the old masters first: their chunks go back to torch's pinned cache and are reused below
        self.masters, self.onloaded, self.pinned_bytes = {}, {}, 0
        slots, pending = [s for s, _t in current], list(current)
        current.clear()   # hold each old tensor in one place only, so it can be freed once copied
        fresh = []
        for s, t in pending:
            if self.pin and t.device.type == "cpu" and t.is_contiguous() and t.is_pinned():
                self.masters[s[0]] = t          # already page-locked (e.g. parked by an earlier placement)
                self.pinned_bytes += t.numel() * t.element_size()
            else:
                fresh.append((s, t))
        pending.clear()
        t = None
        on_gpu = False
        # chunk by chunk, and a CPU source is released as soon as it is copied: host RAM holds at most
        # one chunk more than the expert (a pageable expert is not held twice while it is pinned)
        for size, members in self._pack([t for _s, t in fresh]):
            buf = self._chunk(size)
            for i, off in members:
                s, t = fresh[i]
                fresh[i] = (s, None)
                n = t.numel() * t.element_size()
                dst = buf[off:off + n].view(t.dtype).view(t.shape)
                on_gpu |= t.device.type == "cuda"
                dst.copy_(t, non_blocking=self.pin and t.device.type == "cuda")
                self.masters[s[0]] = dst
                if t.device.type == "cpu":
                    _slot_set(*s[1:], dst)
                del t
        if on_gpu:
            torch.cuda.synchronize()
        for s in slots:
            _slot_set(*s[1:], self.masters[s[0]])
        self.copies_out += len(fresh)
        _host_empty_cache()

    def onload(self, slots: list[tuple], device: torch.device) -> None:
        """One asynchronous copy per tensor from its master (the caller synchronizes)."""
        for s in slots:
            key, t = s[0], _slot_get(*s[1:])
            if not self._is_current(key, t) or t.device.type != "cpu":
                if t.device != device:        # not parked (added after parking): plain move
                    _slot_set(*s[1:], t.to(device))
                continue
            m = self.masters[key]
            if device.type == "cpu":
                d = m.clone()
            else:
                d = torch.empty_like(m, device=device)
                d.copy_(m, non_blocking=True)
            _slot_set(*s[1:], d)
            self.onloaded[key] = (d.data_ptr(), str(d.device), d.dtype, tuple(d.shape))


def _tensor_bytes(model: nn.Module, streamed: set[int] | None) -> tuple[int, int]:
    """(resident bytes, streamed bytes) of a model's parameters and buffers."""
    prefixes = tuple(f"blocks.{i}." for i in (streamed or ()))
    res = stream = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        size = t.numel() * t.element_size()
        if prefixes and name.startswith(prefixes):
            stream += size
        else:
            res += size
    return res, stream


class Placement:
    """Applies RuntimeOptions to the expert list and brings the needed expert to the device.

    The sampler calls `activate(i)` before using expert i (0 = high-noise or the only expert,
    1 = low-noise), `recover()` after an exception, and reads `swaps` / `swap_seconds`.
    """

    def __init__(self, experts: Sequence[nn.Module | None], options: RuntimeOptions | None = None):
        options = options or RuntimeOptions()
        options.validate()
        self.options = options
        self.device = options.torch_device()
        if self.device.type == "cuda":
            enable_expandable_segments()
        self.experts = list(experts)
        self.active: int | None = None
        self.swaps = 0
        self.swap_seconds = 0.0
        self.attention_backend: str | None = None
        self._streamed: dict[int, set[int]] = {}
        self._all_streamed: dict[int, bool] = {}
        self._fast_done: set[int] = set()
        self.fast_paths: dict[int, dict] = {}
        self._parking: dict[int, _PinnedParking] = {}
        self.pin_seconds = 0.0     # time spent copying experts into pinned masters (placement, fast-path changes)

        requested = parse_dtype(options.compute_dtype)
        dtypes = set()
        for i, model in enumerate(self.experts):
            if model is None:
                continue
            model.eval()
            dtypes.add(apply_precision(model, requested))
            self.attention_backend = apply_attention(model, options.attention, self.device)
            if options.offload == "none":
                _move_resident(model, self.device, set(), False)
            else:
                if not (options.pinned_swap and options.offload == "model"):
                    _move_resident(model, _CPU, set(), False)
                # with pinned_swap + "model", parking below copies straight from wherever the weights are
                # (a model built or loaded on the GPU goes out by one pinned copy, not a pageable .to())
                if options.offload == "blocks":
                    n = int(options.blocks_to_stream)
                    self._streamed[i] = _stream_blocks(model, n, self.device, options.record_stream)
                    self._all_streamed[i] = n == len(model.blocks)
                if options.pinned_swap:
                    t0 = time.perf_counter()
                    self._parking[i] = _PinnedParking(pin=self.device.type == "cuda")
                    self._parking[i].offload(self._slots(i))
                    self.pin_seconds += time.perf_counter() - t0
        if len(dtypes) > 1:
            raise WanMeterError(
                f"The two experts compute in different dtypes ({sorted(map(str, dtypes))}); load both with "
                "the same weight_dtype or set compute_dtype."
            )
        self.compute_dtype: torch.dtype = dtypes.pop() if dtypes else torch.float32
        if options.offload == "none":
            self.active = None
            for i, model in enumerate(self.experts):
                if model is not None:
                    self._apply_fast_paths(i)

    def _apply_fast_paths(self, index: int) -> None:
        """wanmeter.accel speed paths (fp8 compute, step cache, compile), once per expert, on the device."""
        o = self.options
        if index in self._fast_done or not (o.fp8_compute or o.compile or o.step_cache):
            return
        from ..accel import apply_fast_paths

        self.fast_paths[index] = apply_fast_paths(self.experts[index], fp8_compute=o.fp8_compute,
                                                  compile=o.compile, cache=o.step_cache)
        self._fast_done.add(index)

    # -- used by the sampler -------------------------------------------------------------
    def activate(self, index: int) -> nn.Module:
        """Return expert `index`, on the device; under model/blocks offload, swap the other out."""
        model = self.experts[index] if index < len(self.experts) else None
        if model is None:
            which = "high-noise" if index == 0 else "low-noise"
            raise WanMeterError(
                f"This step needs the {which} expert, which was not loaded. Load both A14B experts, "
                "or choose denoise/boundary so only the loaded expert runs."
            )
        if self.options.offload == "none" or self.active == index:
            self.active = index
            return model
        t0 = time.perf_counter()
        if self.active is not None:
            self._to(self.active, _CPU)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self._to(index, self.device, bring_in=True)
        self._apply_fast_paths(index)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.active is not None:
            self.swaps += 1
        self.swap_seconds += time.perf_counter() - t0
        self.active = index
        return model

    def recover(self) -> None:
        """Put streamed blocks back in CPU memory after an exception interrupted a forward."""
        for i, model in enumerate(self.experts):
            if model is not None and i in self._streamed:
                _offload_streamed_groups(model)

    def unload(self) -> None:
        """Send every expert's resident weights to CPU memory (frees the device for other models)."""
        for i, model in enumerate(self.experts):
            if model is not None:
                self._to(i, _CPU)
        self.active = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def teardown(self) -> None:
        """Remove streaming hooks and leave every expert in CPU memory (before re-placing)."""
        for i, model in enumerate(self.experts):
            if model is None:
                continue
            if i in self._parking:
                self._to(i, _CPU)   # back onto the pinned masters (they stay pinned; a new placement adopts them)
            if i in self._streamed:
                _offload_streamed_groups(model)
                _remove_streaming(model)
            _move_resident(model, _CPU, set(), False)
        self._streamed.clear()
        self._all_streamed.clear()
        self._parking.clear()
        self.active = None

    def describe(self) -> dict:
        """Bytes on the device vs streamed, per expert: what the estimator models."""
        out = {"device": str(self.device), "offload": self.options.offload,
               "attention": self.attention_backend, "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
               "experts": []}
        for i, model in enumerate(self.experts):
            if model is None:
                out["experts"].append(None)
                continue
            res, stream = _tensor_bytes(model, self._streamed.get(i))
            if self._all_streamed.get(i):
                res, stream = 0, res + stream
            park = self._parking.get(i)
            out["experts"].append({"resident_bytes": res, "streamed_bytes": stream,
                                   "streamed_blocks": len(self._streamed.get(i, ())),
                                   "pinned_master_bytes": park.pinned_bytes if park else 0})
        return out

    def _slots(self, index: int) -> list[tuple]:
        return _resident_slots(self.experts[index], self._streamed.get(index, set()),
                               self._all_streamed.get(index, False))

    def _to(self, index: int, device: torch.device, bring_in: bool | None = None) -> None:
        """Move expert `index`'s resident tensors: in to the compute device or out to CPU memory.
        bring_in defaults to "device is not the CPU"; the sampler passes it (a CPU compute device)."""
        model = self.experts[index]
        if model is None:
            return
        bring_in = device.type != "cpu" if bring_in is None else bring_in
        park = self._parking.get(index)
        if park is None:
            _move_resident(model, device, self._streamed.get(index, set()), self._all_streamed.get(index, False))
        elif not bring_in:
            t0, n0 = time.perf_counter(), park.copies_out
            park.offload(self._slots(index))
            if park.copies_out != n0:
                self.pin_seconds += time.perf_counter() - t0
        else:
            park.onload(self._slots(index), device)
