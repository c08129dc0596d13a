"""``ActivationCache``: activations by canonical hook name, with position helpers driven by the layout."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import torch

from moras_interp.models.layout import TokenLayout


class ActivationCache(Mapping[str, torch.Tensor]):
    """A read-only mapping ``hook name -> Tensor`` plus helpers that select positions.

    Tensors keep the shapes of the hook table (e.g. ``[b, pos, d]`` for residual hooks).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], layouts: list[TokenLayout] | None = None) -> None:
        self._t = dict(tensors)
        self.layouts = layouts

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._t:
            raise KeyError(f"{name!r} is not in this cache; it holds: {', '.join(self._t) or 'nothing'}.")
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
        return ActivationCache({k: v.to(device) for k, v in self._t.items()}, self.layouts)

    def _need_layouts(self) -> list[TokenLayout]:
        if self.layouts is None:
            raise ValueError("This cache has no token layouts; build it with model.run_with_cache(batch, ...).")
        return self.layouts

    def last(self, name: str) -> torch.Tensor:
        """[b, d]: the value at each example's last prompt position."""
        lay = self._need_layouts()
        t = self[name]
        idx = torch.tensor([l.last for l in lay], device=t.device)
        return t[torch.arange(t.shape[0], device=t.device), idx]

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
