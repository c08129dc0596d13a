"""``ActivationCache``: activations by canonical hook name, with position helpers driven by the layout and
TransformerLens's indexing (``cache["resid_pre", 0]``) and analysis API (:mod:`moras_interp.models.cache_analysis`)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models.act_names import get_act_name
from moras_interp.models.cache_analysis import ResidAnalysis
from moras_interp.models.layout import TokenLayout
from moras_interp.models.positions import select_positions

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


class ActivationCache(ResidAnalysis, Mapping[str, torch.Tensor]):
    """A read-only mapping ``hook name -> Tensor`` plus helpers that select positions.

    Tensors keep the shapes of the hook table (e.g. ``[b, pos, d]`` for residual hooks). Keys may also be
    TransformerLens shorthand: ``cache["resid_pre", 0]``, ``cache["pattern", 2, "attn"]``, ``cache["scale", 3, "ln1"]``,
    ``cache["z", -1]`` (negative layers count from the end), ``cache["k6"]`` (see
    :func:`~moras_interp.models.act_names.get_act_name`). ``model`` (set by ``run_with_cache``) is what the analysis
    methods read norms and weights from.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], layouts: list[TokenLayout] | None = None,
                 model: MLLM | None = None) -> None:
        self._t = dict(tensors)
        self.layouts = layouts
        self.model = model

    def resolve(self, key: Any) -> str:
        """The full hook name of ``key`` (a name, TransformerLens shorthand, or ``(name, layer[, sublayer])``)."""
        if isinstance(key, str):
            return key if key in self._t else get_act_name(key)
        if not isinstance(key, tuple) or not 1 <= len(key) <= 3 or not isinstance(key[0], str):
            raise KeyError(f"Cache key {key!r}: use a hook name or (name, layer[, sublayer]) like ('resid_pre', 0).")
        name, layer, *rest = (*key, None) if len(key) == 1 else key
        if isinstance(layer, int) and layer < 0:
            if self.model is None:
                raise KeyError(f"Cache key {key!r}: a negative layer needs the model (cache.model is None).")
            layer += self.model.n_layers
        return get_act_name(name, layer, rest[0] if rest else None)

    def __getitem__(self, key: Any) -> torch.Tensor:
        name = self.resolve(key)
        if name not in self._t:
            shown = f" ({key!r} -> {name!r})" if name != key else ""
            raise KeyError(f"{name!r}{shown} is not in this cache; it holds: {', '.join(self._t) or 'nothing'}.")
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._t.items())[:6])
        more = f", … (+{len(self._t) - 6})" if len(self._t) > 6 else ""
        return f"ActivationCache({shapes}{more})"

    def to(self, device: torch.device | str) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._t.items()}, self.layouts, self.model)

    def _need_layouts(self) -> list[TokenLayout]:
        if self.layouts is None:
            raise ValueError("This cache has no token layouts; build it with model.run_with_cache(batch, ...).")
        return self.layouts

    def last(self, name: str) -> torch.Tensor:
        """[b, d]: the value at each example's last prompt position."""
        return select_positions(self[name], "last", self._need_layouts(), pos_dim=1)

    def image(self, name: str, example: int, image: int = 0, grid_only: bool = False) -> torch.Tensor:
        """[n_tokens, d]: the values at one image's token positions (``grid_only`` drops separators)."""
        im = self._need_layouts()[example].images[image]
        pos = im.grid_positions() if grid_only else im.positions
        return self[name][example, pos.to(self[name].device)]

    def instruction(self, name: str, example: int) -> torch.Tensor:
        """[n_instr, d]: the values at the instruction's token positions."""
        pos = self._need_layouts()[example].instruction
        return self[name][example, pos.to(self[name].device)]

    def stack(self, template: str = "blocks.{l}.hook_resid_post") -> torch.Tensor:
        """[L, ...]: the per-layer tensors of a name template, stacked in layer order."""
        pat = re.compile("^" + re.escape(template).replace(r"\{l\}", r"(\d+)") + "$")
        found = sorted((int(m.group(1)), k) for k in self._t if (m := pat.match(k)))
        if not found:
            raise KeyError(f"No cached names match {template!r}.")
        return torch.stack([self._t[k] for _, k in found])
