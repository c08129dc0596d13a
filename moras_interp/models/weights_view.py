"""Weights in TransformerLens shapes, as views of the HF parameters (no copies): ``model.weights``.

=============  ==================================  ===========================================================
accessor       shape                               view of
=============  ==================================  ===========================================================
``W_Q(l)``     [heads, d, d_head]                  ``q_proj.weight`` [heads·d_head, d]
``W_K(l)``     [kv_heads, d, d_head]               ``k_proj.weight`` (GQA: one slice per KV head)
``W_V(l)``     [kv_heads, d, d_head]               ``v_proj.weight``
``W_O(l)``     [heads, d_head, d]                  ``o_proj.weight`` [d, heads·d_head]
``b_Q(l)``...  [heads or kv_heads, d_head]; b_O [d]  the projection biases (``None`` where the model has none)
``W_gate(l)``  [d, d_mlp]                          ``mlp.gate_proj.weight`` (TL: ``W_gate``)
``W_in(l)``    [d, d_mlp]                          ``mlp.up_proj.weight`` (TL's ``W_in`` of a gated MLP)
``W_out(l)``   [d_mlp, d]                          ``mlp.down_proj.weight``
``W_E``        [vocab, d]                          ``embed_tokens.weight`` (Gemma: the ``sqrt(d)`` scale is
                                                   applied by the embedding module, not stored here)
``W_U``        [d, vocab]                          ``lm_head.weight`` (tied to ``W_E`` where the model ties them)
``ln_w(name)`` [d]                                 a norm's weight, e.g. ``ln_w("blocks.3.ln1")``, ``"ln_final"``
=============  ==================================  ===========================================================

So ``q = einsum("bpd,hde->bphe", ln1.hook_normalized·w, W_Q) + b_Q`` reproduces ``attn.hook_q``. Views share
storage with the module parameters (``W_Q(l).data_ptr() == q_proj.weight.data_ptr()``): editing them in place
edits the model. Grouped-query attention: ``W_K``/``W_V``/``b_K``/``b_V`` have one slice per KV head, as
``attn.hook_k``/``hook_v``; ``expand=True`` returns the per-query-head version (KV head ``h // (heads/kv_heads)``
for query head ``h``, TransformerLens' ``repeat_interleave``) as a new tensor, not a view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from moras_interp.models.adapters.base import Adapter


class TLWeights:
    """TransformerLens-shaped views of one model's weights (see the module docstring for shapes)."""

    def __init__(self, adapter: Adapter) -> None:
        from moras_interp.models.adapters.tl_points import head_counts

        self.adapter = adapter
        self.n_heads, self.n_kv_heads, self.d_head = head_counts(adapter)
        self.n_layers = adapter.n_layers()

    def _layer(self, l: int) -> torch.nn.Module:
        if not -self.n_layers <= l < self.n_layers:
            raise IndexError(f"layer {l} out of range for a model with {self.n_layers} layers.")
        return self.adapter.module(f"{self.adapter.decoder}.layers.{l % self.n_layers}")

    def _expand(self, t: torch.Tensor | None, expand: bool) -> torch.Tensor | None:
        if t is None or not expand:
            return t
        return t.repeat_interleave(self.n_heads // self.n_kv_heads, dim=0)

    def _w_in(self, proj: torch.nn.Linear, expand: bool = False) -> torch.Tensor:
        w = proj.weight.unflatten(0, (-1, self.d_head)).transpose(1, 2)  # [n, d, d_head]
        return self._expand(w, expand)  # type: ignore[return-value]

    def _b(self, proj: torch.nn.Linear, expand: bool = False) -> torch.Tensor | None:
        b = proj.bias
        return None if b is None else self._expand(b.unflatten(0, (-1, self.d_head)), expand)

    def W_Q(self, l: int) -> torch.Tensor:
        return self._w_in(self._layer(l).self_attn.q_proj)

    def W_K(self, l: int, *, expand: bool = False) -> torch.Tensor:
        return self._w_in(self._layer(l).self_attn.k_proj, expand)

    def W_V(self, l: int, *, expand: bool = False) -> torch.Tensor:
        return self._w_in(self._layer(l).self_attn.v_proj, expand)

    def W_O(self, l: int) -> torch.Tensor:
        return self._layer(l).self_attn.o_proj.weight.t().unflatten(0, (self.n_heads, self.d_head))

    def b_Q(self, l: int) -> torch.Tensor | None:
        return self._b(self._layer(l).self_attn.q_proj)

    def b_K(self, l: int, *, expand: bool = False) -> torch.Tensor | None:
        return self._b(self._layer(l).self_attn.k_proj, expand)

    def b_V(self, l: int, *, expand: bool = False) -> torch.Tensor | None:
        return self._b(self._layer(l).self_attn.v_proj, expand)

    def b_O(self, l: int) -> torch.Tensor | None:
        return self._layer(l).self_attn.o_proj.bias

    def W_gate(self, l: int) -> torch.Tensor:
        return self._layer(l).mlp.gate_proj.weight.t()

    def W_in(self, l: int) -> torch.Tensor:
        return self._layer(l).mlp.up_proj.weight.t()

    def W_out(self, l: int) -> torch.Tensor:
        return self._layer(l).mlp.down_proj.weight.t()

    @property
    def W_E(self) -> torch.Tensor:
        return self.adapter.module(f"{self.adapter.decoder}.embed_tokens").weight

    @property
    def W_U(self) -> torch.Tensor:
        return self.adapter.module(self.adapter.lm_head).weight.t()

    def ln_w(self, name: str) -> torch.Tensor:
        """The weight of norm ``"blocks.{l}.ln1"``, ``"blocks.{l}.ln2"`` or ``"ln_final"`` (Gemma: multiply by
        ``1 + w``, see ``hook_normalized``)."""
        if name == "ln_final":
            return self.adapter.module(f"{self.adapter.decoder}.norm").weight
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or parts[2] not in ("ln1", "ln2") or not parts[1].lstrip("-").isdigit():
            raise KeyError(f"ln_w({name!r}): use 'blocks.{{l}}.ln1', 'blocks.{{l}}.ln2' or 'ln_final'.")
        return getattr(self._layer(int(parts[1])), getattr(self.adapter, parts[2])).weight
