"""Privacy layers: one file per layer, each implementing the contract in :mod:`.base`.

``build_layer`` turns a configuration entry (``{"layer": "clip", "norm": 1.0}``) into a layer;
``preset`` gives the stack behind a demo ``--privacy`` name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from securefl.errors import ConfigError
from securefl.layers.base import (
    PrivacyStack,
    RoundContext,
    SecureSum,
    StackContext,
    SumAggregator,
    SumParty,
    Transform,
)
from securefl.layers.ckks import CKKS
from securefl.layers.clip import Clip
from securefl.layers.dp import DPNoise
from securefl.layers.paillier import Paillier
from securefl.layers.paillier_threshold import PaillierThreshold
from securefl.layers.plain import Plain
from securefl.layers.quantize import Quantize
from securefl.layers.secagg import Identities, SecAgg, SecAggPlus
from securefl.registry import construct

Layer = Transform | SecureSum

LAYERS: dict[str, Callable[..., Layer]] = {
    "plain": Plain,
    "clip": Clip,
    "dp": DPNoise,
    "quantize": Quantize,
    "secagg": SecAgg,
    "secagg+": SecAggPlus,
    "paillier": Paillier,
    "paillier-threshold": PaillierThreshold,
    "ckks": CKKS,
}

# The stack behind each `--privacy NAME` of the demo. Integer secure sums quantize the clipped
# update to 24 bits, which modulo 2^32 sums up to 256 parties without overflow.
PRESETS: dict[str, Callable[[], list[Layer]]] = {
    "plain": lambda: [Plain()],
    "secagg": lambda: [Clip(10.0), Quantize(24), SecAgg()],
    "secagg+": lambda: [Clip(10.0), Quantize(24), SecAggPlus()],
    "paillier": lambda: [Clip(10.0), Quantize(16), Paillier()],
    # Add-only parameters at scale 2^25: sums up to 2^18 per coordinate, enough for the demo's worst
    # case (clip 10 × up to 455 examples × parties), still 27 bytes per value and ~1e-5 error.
    "ckks": lambda: [Clip(10.0), CKKS(scale_bits=25)],
}


def _threshold_demo(parties: Sequence[str]) -> list[Layer]:
    from securefl.layers.paillier_threshold import demo_stack

    return demo_stack(list(parties))


# Presets whose key is dealt to the federation's parties when the stack is built: the dealer is the
# simulating process, fine for a simulation and nothing else (a deployment runs the key ceremony,
# `securefl keys paillier-threshold`, and names the files with key_dir / key_file).
DEALT_PRESETS: dict[str, Callable[[Sequence[str]], list[Layer]]] = {
    "paillier-threshold": _threshold_demo,
}
PRESET_NAMES: tuple[str, ...] = tuple(sorted({*PRESETS, *DEALT_PRESETS}))


def with_clip(layers: list[Layer], clip: float) -> list[Layer]:
    """``layers`` with every clip set to ``clip`` (one is added in front if missing)."""
    out = [Clip(clip) if isinstance(layer, Clip) else layer for layer in layers]
    if not any(isinstance(layer, Clip) for layer in out):
        out.insert(0, Clip(clip))
    return out


def with_dp(layers: list[Layer], noise: DPNoise, clip: float) -> list[Layer]:
    """``layers`` with every clip set to ``clip`` and ``noise`` where it belongs: after quantize for
    an integer sum (Skellam), else right after the clip."""
    out = with_clip(layers, clip)
    anchor = max(i for i, layer in enumerate(out) if isinstance(layer, (Clip, Quantize)))
    if noise.placement == "central":
        anchor = max(i for i, layer in enumerate(out) if isinstance(layer, Clip))
    out.insert(anchor + 1, noise)
    return out


def build_layer(entry: Mapping[str, Any]) -> Layer:
    """One layer from a config entry: ``layer`` names it, the other keys are its parameters."""
    return construct("privacy layer", LAYERS, entry, "layer")


def preset(name: str, parties: Sequence[str] | None = None) -> list[Layer]:
    """The layers behind a preset name; ``parties`` (the federation's ids) for a dealt preset."""
    if name in DEALT_PRESETS:
        if not parties:
            raise ConfigError(
                f"the {name!r} preset deals its key to the federation's parties, so it needs their ids "
                "(a Federation or `securefl demo|run` passes them); or run 'securefl keys "
                f"{name}' and give the layer key_dir"
            )
        return DEALT_PRESETS[name](parties)
    if name not in PRESETS:
        raise ConfigError(f"unknown privacy preset {name!r}; available: {', '.join(PRESET_NAMES)}")
    return PRESETS[name]()


__all__ = [
    "CKKS",
    "LAYERS",
    "PRESETS",
    "PRESET_NAMES",
    "Clip",
    "DPNoise",
    "Identities",
    "Paillier",
    "PaillierThreshold",
    "Plain",
    "PrivacyStack",
    "Quantize",
    "RoundContext",
    "SecAgg",
    "SecAggPlus",
    "SecureSum",
    "StackContext",
    "SumAggregator",
    "SumParty",
    "Transform",
    "build_layer",
    "preset",
    "with_clip",
    "with_dp",
]
