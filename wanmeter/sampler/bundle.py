"""WanModelBundle: the DiT expert(s) of one Wan2.2 variant plus what the sampler needs around them.

The bundle owns the runtime placement (offload, attention, dtype) so the sampler never
decides where weights live; it only asks the placement for the expert a step needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from ..errors import WanMeterError
from ..runtime.options import RuntimeOptions
from ..runtime.placement import Placement
from ..variants import vae_family, variant, variant_names



def _vae_constants(vae: Any) -> tuple[list[float] | None, list[float] | None]:
    """latents_mean/std from a WanVAE wrapper or a diffusers AutoencoderKLWan, when it has them."""
    for obj in (vae, getattr(vae, "model", None), getattr(vae, "vae", None)):
        if obj is None:
            continue
        cfg = getattr(obj, "config", None)  # diffusers models: read the config, not the deprecated attribute
        src = cfg if cfg is not None and getattr(cfg, "latents_mean", None) is not None else obj
        mean, std = getattr(src, "latents_mean", None), getattr(src, "latents_std", None)
        if mean is not None and std is not None:
            return [float(x) for x in mean], [float(x) for x in std]
    return None, None


@dataclass
class WanModelBundle:
    """The expert(s) of one variant, the VAE normalization constants and the runtime options.

    experts: (high_noise, low_noise) for t2v_a14b / i2v_a14b (either may be None when only the
        other one is needed, e.g. a low-noise-only refinement pass); (model,) for ti2v_5b.
        Each is a diffusers WanTransformer3DModel; (model,) for s2v_14b, a WanS2VTransformer placed the
        same way (offload, block streaming, attention) and sampled by wanmeter.s2v.
    latents_mean / latents_std: the VAE family's constants; default from variants.json.
    runtime: placement options; the placement is applied on first use (see `placement`).
    """

    variant: str
    experts: Sequence[nn.Module | None]
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    _placement: Placement | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        variant(self.variant)  # raises with the list of known names (S2V bundles are sampled by wanmeter.s2v)
        self.experts = tuple(self.experts)
        want = self.facts["experts"]
        if len(self.experts) != want or all(e is None for e in self.experts):
            names = "(high_noise, low_noise)" if want == 2 else "(model,)"
            raise WanMeterError(
                f"{self.facts['label']} takes experts={names}; got {len(self.experts)} entries. "
                "Pass the loaded DiT(s) in that order (None for an expert you do not need)."
            )
        fam = self.vae
        if self.latents_mean is None or self.latents_std is None:
            self.latents_mean, self.latents_std = fam.get("latents_mean"), fam.get("latents_std")
        if self.latents_mean is None or self.latents_std is None:
            raise WanMeterError(
                f"The {self.facts['vae']} VAE's latents_mean/latents_std are missing from variants.json; "
                "build the bundle with WanModelBundle.from_loaded(..., vae=<the loaded VAE>) or pass them."
            )
        z = int(fam["z_dim"])
        if len(self.latents_mean) != z or len(self.latents_std) != z:
            raise WanMeterError(
                f"{self.facts['label']} needs {z} latent normalization constants (the {self.facts['vae']} VAE); "
                f"got {len(self.latents_mean)}. Use the matching VAE."
            )
        for e in self.experts:
            if e is None:
                continue
            cin = int(getattr(e.config, "in_channels"))
            if cin != int(self.facts["in_channels"]):
                guess = [n for n in variant_names() if variant(n)["in_channels"] == cin]
                raise WanMeterError(
                    f"This DiT has in_channels={cin} but {self.facts['label']} needs {self.facts['in_channels']}; "
                    f"it looks like {guess or 'another model'}: pick that variant or load the right file."
                )

    # -- facts ---------------------------------------------------------------------------
    @property
    def facts(self) -> dict[str, Any]:
        return variant(self.variant)

    @property
    def vae(self) -> dict[str, Any]:
        return vae_family(self.facts["vae"])

    @property
    def any_expert(self) -> nn.Module:
        return next(e for e in self.experts if e is not None)

    # -- placement -----------------------------------------------------------------------
    @property
    def placement(self) -> Placement:
        """The applied runtime placement (built on first access)."""
        if self._placement is None:
            self._placement = Placement(self.experts, self.runtime)
        return self._placement

    def set_runtime(self, options: RuntimeOptions) -> None:
        """Change offload/attention/dtype: undoes the old placement, applies the new one lazily."""
        options.validate()
        if self._placement is not None:
            self._placement.teardown()
            self._placement = None
        self.runtime = options

    @classmethod
    def from_loaded(cls, variant_name: str | None, *experts: Any, vae: Any = None,
                    runtime: RuntimeOptions | None = None) -> "WanModelBundle":
        """Build from loader results (LoadedDiT with .model/.info.variant, or bare diffusers models).

        variant_name None takes it from the first LoadedDiT's info; vae (a WanVAE) supplies the
        normalization constants and is checked against the variant's VAE family.
        """
        models, found = [], None
        for e in experts:
            if e is not None and hasattr(e, "model") and hasattr(e, "info"):
                found = found or getattr(e.info, "variant", None)
                models.append(e.model)
            else:
                models.append(e)
        name = variant_name or found
        if name is None:
            raise WanMeterError("Cannot tell the variant: pass variant_name ('t2v_a14b', 'i2v_a14b' or 'ti2v_5b').")
        mean = std = None
        if vae is not None:
            fam = getattr(vae, "family", None)
            want = variant(name)["vae"]
            if fam is not None and fam != want:
                files = {"wan21": "wan_2.1_vae.safetensors", "wan22": "wan2.2_vae.safetensors"}
                raise WanMeterError(
                    f"{variant(name)['label']} needs the {want} VAE ({files[want]}) but a {fam} VAE was given."
                )
            mean, std = _vae_constants(vae)
        return cls(name, models, runtime=runtime or RuntimeOptions(), latents_mean=mean, latents_std=std)
