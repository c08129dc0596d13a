"""The authors' ablations behind MoRAS's interface: blank / no image per stage, and difference-of-means
direction steering (through :mod:`moras_interp.activations.steering`, the project's one steering mechanism)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from moras_interp.activations.steering import direction_hooks, steering_hooks
from moras_interp.moras.states import FINAL

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM
    from moras_interp.moras.prototype import UnsafePrototype

BLANK_SIZE = (336, 336)


def blank_like(image: Any) -> Image.Image:
    """A white RGB image of the same size as ``image`` (a PIL image or a path; ``BLANK_SIZE`` when None)."""
    if isinstance(image, (list, tuple)):
        image = image[0] if image else None
    if image is not None and not hasattr(image, "size"):
        with Image.open(image) as im:
            size = im.size
    else:
        size = image.size if image is not None else BLANK_SIZE
    return Image.new("RGB", size, (255, 255, 255))


def stage_images(images: Sequence[Any], mode: str, stage: str, stages: Sequence[str]) -> list[Any] | None:
    """The images a stage sends: as given, blanked, or None (text-only prompts) per ``MoRASConfig.image_mode``."""
    if mode == "image" or stage not in stages:
        return list(images)
    if mode == "blank":
        return [blank_like(im) for im in images]
    if mode == "none":
        return None
    raise ValueError(f"image_mode={mode!r}: use 'image', 'blank' or 'none'.")


def prototype_direction(unsafe: UnsafePrototype, safe: UnsafePrototype, hooks: Sequence[str] = (FINAL,), *,
                        normalise: bool = True) -> dict[str, torch.Tensor]:
    """Difference of means: {hook: mean_t u_t − mean_t s_t} [d] from an unsafe and a safe prototype (each already
    a per-step mean over its prompts, built the same way), unit-norm unless ``normalise=False``."""
    out = {}
    for h in hooks:
        if h not in unsafe.states or h not in safe.states:
            raise ValueError(f"Both prototypes need states at {h!r}: build them with hooks=({h!r},).")
        v = unsafe.states[h].float().mean(0) - safe.states[h].float().mean(0)
        if normalise:
            n = float(v.norm())
            if n == 0.0:
                raise ValueError(f"The unsafe and safe prototypes are identical at {h}: no direction.")
            v = v / n
        out[h] = v
    return out


def direction_steering(model: MLLM, direction: Any, strength: torch.Tensor, n_steps: int,
                       layouts: Any = None) -> AbstractContextManager[Any]:
    """h ← h + strength_i · v at the last position for the first ``n_steps`` generated tokens (steps 0..N−1)."""
    vecs = direction_hooks(direction)
    fwd = steering_hooks(model, vecs, alpha=strength.float(), positions="last")
    return model.hooks(fwd, steps=range(n_steps), layouts=layouts)
