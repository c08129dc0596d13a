"""TransformerLens's residual-stream analysis API on :class:`~moras_interp.models.cache.ActivationCache`.

``accumulated_resid``, ``decompose_resid``, ``stack_head_results``, ``apply_ln_to_stack`` and ``logit_attrs`` follow
TransformerLens's ``ActivationCache`` (arguments, labels, stacking order). Stacks are ``[components, b, pos, d]``
(``[components, b, d]`` after an int or ``"last"`` ``pos_slice``); ``pos_slice`` takes everything
:func:`~moras_interp.models.positions.select_positions` does, including the token-layout groups ``"last"``,
``"image"``, ``"instruction"`` and ``"text"``.

Differences that matter, all because our weights are not processed (no ``fold_ln``):

- ``apply_ln_to_stack`` divides by the norm's CACHED scale (``ln_final.hook_scale`` /
  ``blocks.{l}.ln1|ln2.hook_scale``, or the scale recomputed from the cached residual the norm reads when the
  scale hook was not cached) and centres for LayerNorm; like TransformerLens it does not apply the norm's weight,
  so on the full residual it equals ``ln_final.hook_normalized``.
- ``logit_attrs`` folds the final norm's effective weight (Gemma: ``1 + w``) into the unembedding directions
  (what TransformerLens's ``fold_ln`` does to ``W_U``), so the attributions of a decomposition add up to the
  logit (difference) minus the final norm's bias term (LayerNorm only) and the ``lm_head`` bias (none of the
  supported models has either). Gemma 2-style final logit soft-capping is not linear; attributions are then of the
  logits before the cap.
- The "embed" component of ``decompose_resid`` is the sequence the decoder receives (image features merged in):
  ``hook_inputs_embeds`` when cached, else ``blocks.0.hook_resid_pre`` (the same tensor).
- Gemma3's attention output passes through its post-attention norm before it joins the residual, so its head
  results (TransformerLens's ``hook_result``, before that norm) do not add up to ``hook_attn_out``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from moras_interp.models.norm_math import NormAffine, norm_affine
from moras_interp.models.positions import PosSlice, select_positions

if TYPE_CHECKING:
    from moras_interp.models.layout import TokenLayout
    from moras_interp.models.mllm import MLLM


def final_norm(model: MLLM) -> NormAffine:
    """The decoder's final norm (``ln_final``), identified by :func:`~moras_interp.models.norm_math.norm_affine`."""
    return norm_affine(model.adapter.module(f"{model.adapter.decoder}.norm"))


def block_norm(model: MLLM, layer: int, mlp_input: bool = False) -> NormAffine:
    """ln1 or, with ``mlp_input``, ln2 of one decoder layer (the adapter's ``ln1`` / ``ln2`` modules)."""
    ad = model.adapter
    return norm_affine(ad.module(f"{ad.decoder}.layers.{layer}.{ad.ln2 if mlp_input else ad.ln1}"))


def token_ids(model: MLLM, tokens: Any) -> torch.Tensor:
    """LongTensor of token ids from an int, a single-token string, a list or a tensor (shape kept)."""
    if isinstance(tokens, str):
        ids = model.tokenizer.encode(tokens, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{tokens!r} is {len(ids)} tokens ({ids}) for this tokenizer; give one token (or its id).")
        return torch.tensor(ids[0])
    if isinstance(tokens, (list, tuple)):
        return torch.stack([token_ids(model, t) for t in tokens])
    return torch.as_tensor(tokens, dtype=torch.long)


class ResidAnalysis:
    """Mixin with TransformerLens's analysis methods for :class:`~moras_interp.models.cache.ActivationCache` (which
    provides ``self[key]``, ``_t``, ``layouts`` and ``model``)."""

    _t: dict[str, torch.Tensor]
    layouts: list[TokenLayout] | None
    model: MLLM | None

    def _need_model(self) -> MLLM:
        if self.model is None:
            raise ValueError("This analysis needs the model (its norms and weights); use the cache returned by "
                             "model.run_with_cache(batch, ...), or set cache.model = model.")
        return self.model

    def _n_layers(self) -> int:
        return self._need_model().n_layers

    def _layer_arg(self, layer: int | None) -> int:
        n = self._n_layers()
        if layer is None or layer == -1:
            return n
        if not 0 <= layer <= n:
            raise ValueError(f"layer={layer}: expected 0 … {n} (n_layers = unembed), -1 or None.")
        return layer

    def _resid(self, kind: Literal["pre", "mid", "post"], layer: int) -> torch.Tensor:
        """``blocks.{layer}.hook_resid_{kind}``; resid_mid falls back to resid_pre + attn_out when not cached."""
        name = f"blocks.{layer}.hook_resid_{kind}"
        if name in self._t:
            return self._t[name]
        if kind == "mid" and f"blocks.{layer}.hook_resid_pre" in self._t and f"blocks.{layer}.hook_attn_out" in self._t:
            return self._t[f"blocks.{layer}.hook_resid_pre"] + self._t[f"blocks.{layer}.hook_attn_out"]
        return self[name]

    def inputs_embeds(self) -> torch.Tensor:
        """[b, pos, d]: the sequence the decoder reads (image features merged): ``hook_inputs_embeds`` if cached,
        else ``blocks.0.hook_resid_pre`` (the same tensor)."""
        return self._t["hook_inputs_embeds"] if "hook_inputs_embeds" in self._t else self["blocks.0.hook_resid_pre"]

    def _sel(self, t: torch.Tensor, pos_slice: PosSlice, pos_dim: int = -2) -> torch.Tensor:
        return select_positions(t, pos_slice, self.layouts, pos_dim=pos_dim)

    # ------------------------------------------------------------------ stacks
    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: PosSlice = None, mlp_input: bool = False, return_labels: bool = False) -> Any:
        """[components, b, pos, d]: the residual stream before each layer up to ``layer`` (``"{l}_pre"``, with
        ``incl_mid`` also ``"{l}_mid"``), and ``"final_post"`` when ``layer`` is None / -1 / n_layers.

        ``apply_ln=True``: towards the unembed (``layer`` = n_layers) every entry goes through the model's own final
        norm (its statistics AND weight: ``stack @ W_U`` are logit-lens logits); for an earlier layer the entries are
        divided by that layer's cached ln1 (ln2 with ``mlp_input``) scale, as :meth:`apply_ln_to_stack`.
        """
        layer = self._layer_arg(layer)
        n = self._n_layers()
        comps, labels = [], []
        for l in range(layer + 1):
            if l == n:
                comps.append(self._resid("post", n - 1))
                labels.append("final_post")
                continue
            comps.append(self._resid("pre", l))
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                comps.append(self._resid("mid", l))
                labels.append(f"{l}_mid")
        stack = torch.stack([self._sel(c, pos_slice) for c in comps])
        if apply_ln:
            if layer == n:
                norm = final_norm(self._need_model())
                stack = norm(stack).to(stack.dtype)
            else:
                stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False,
                        mode: Literal["all", "mlp", "attn"] = "all", apply_ln: bool = False,
                        pos_slice: PosSlice = None, incl_embeds: bool = True, return_labels: bool = False) -> Any:
        """[components, b, pos, d]: ``embed`` then ``{l}_attn_out`` / ``{l}_mlp_out`` for every layer before ``layer``
        (plus ``{layer}_attn_out`` with ``mlp_input``). With every part included they sum to the residual stream
        entering ``layer`` (the final residual for None / -1 / n_layers), up to float rounding."""
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"mode={mode!r}: use 'all', 'mlp' or 'attn'.")
        layer = self._layer_arg(layer)
        comps, labels = ([self.inputs_embeds()], ["embed"]) if incl_embeds else ([], [])
        for l in range(layer):
            if mode != "mlp":
                comps.append(self[f"blocks.{l}.hook_attn_out"])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                comps.append(self[f"blocks.{l}.hook_mlp_out"])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            comps.append(self[f"blocks.{layer}.hook_attn_out"])
            labels.append(f"{layer}_attn_out")
        if not comps:
            raise ValueError("decompose_resid selected no component (layer=0 with incl_embeds=False?).")
        stack = torch.stack([self._sel(c, pos_slice) for c in comps])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def head_results(self, layer: int) -> torch.Tensor:
        """[b, pos, n_heads, d_model]: ``blocks.{layer}.attn.hook_result`` if cached, else ``hook_z`` · ``W_O``."""
        name = f"blocks.{layer}.attn.hook_result"
        if name in self._t:
            return self._t[name]
        z = self._t.get(f"blocks.{layer}.attn.hook_z")
        if z is None:
            raise KeyError(f"Neither {name!r} nor 'blocks.{layer}.attn.hook_z' is in this cache; cache one of them, "
                           "e.g. model.run_with_cache(batch, names_filter='blocks.*.attn.hook_z').")
        w_o = self._need_model().weights.W_O(layer).detach()
        return torch.einsum("bphd,hdm->bphm", z, w_o.to(z.dtype))

    def stack_head_results(self, layer: int | None = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: PosSlice = None, apply_ln: bool = False) -> Any:
        """[layer·n_heads, b, pos, d]: every head's result (``z_h · W_O[h]``, no ``b_O``) for the layers before
        ``layer``, labelled ``"L{l}H{h}"``; ``incl_remainder`` appends the rest of ``resid_post`` of ``layer - 1``."""
        layer = self._layer_arg(layer)
        comps, labels = [], []
        for l in range(layer):
            r = self._sel(self.head_results(l), pos_slice, pos_dim=-3)  # [b, (pos,) H, d]
            comps.append(r.movedim(-2, 0))
            labels += [f"L{l}H{h}" for h in range(r.shape[-2])]
        stack = torch.cat(comps) if comps else torch.zeros(0, *self._sel(self.inputs_embeds(), pos_slice).shape)
        if incl_remainder:
            total = self._sel(self._resid("post", layer - 1), pos_slice) if layer > 0 else self._sel(
                self.inputs_embeds(), pos_slice)
            stack = torch.cat([stack, (total - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # ------------------------------------------------------------------ norms and logits
    def _norm_for(self, layer: int, mlp_input: bool) -> NormAffine:
        model = self._need_model()
        return final_norm(model) if layer == self._n_layers() else block_norm(model, layer, mlp_input)

    def ln_scale(self, layer: int | None = None, mlp_input: bool = False) -> torch.Tensor:
        """[b, pos, 1]: the scale of the norm in front of ``layer`` (ln1, or ln2 with ``mlp_input``; ``ln_final``
        for None / -1 / n_layers), from the cached ``hook_scale`` or recomputed from the cached residual it reads."""
        layer = self._layer_arg(layer)
        n = self._n_layers()
        if layer == n and mlp_input:
            raise ValueError("mlp_input=True has no meaning for the unembed (layer = n_layers).")
        name = "ln_final.hook_scale" if layer == n else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        if name in self._t:
            return self._t[name]
        try:
            x = self._resid("post", n - 1) if layer == n else self._resid("mid" if mlp_input else "pre", layer)
        except KeyError:
            raise KeyError(f"apply_ln needs {name!r} or the residual that norm reads in the cache; add one of them "
                           "to names_filter.") from None
        return self._norm_for(layer, mlp_input).scale(x)

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: PosSlice = None) -> torch.Tensor:
        """``residual_stack`` [components, b, (pos,) d] as input to ``layer``'s norm (None / -1 = ``ln_final``):
        centred for LayerNorm, divided by the cached scale of the full residual (``pos_slice`` must be the one the
        stack was built with). Linear: the entries add up to the normalized residual (TransformerLens's
        ``hook_normalized``, before the norm's weight)."""
        layer = self._layer_arg(layer)
        scale = self._sel(self.ln_scale(layer, mlp_input), pos_slice)
        return self._norm_for(layer, mlp_input).normalize(residual_stack, scale.to(residual_stack.dtype))

    def logit_directions(self, tokens: Any, incorrect_tokens: Any = None) -> torch.Tensor:
        """[*token_shape, d]: ``W_U[:, tokens]`` (minus ``W_U[:, incorrect_tokens]``) times the final norm's
        effective weight, i.e. the direction in the normalized residual that writes those logits."""
        model = self._need_model()
        w_u, norm = model.weights.W_U.detach(), final_norm(model)
        tok = token_ids(model, tokens).to(w_u.device)
        d = w_u[:, tok].movedim(0, -1)
        if incorrect_tokens is not None:
            bad = token_ids(model, incorrect_tokens).to(w_u.device)
            if bad.shape != tok.shape:
                raise ValueError(f"tokens {tuple(tok.shape)} and incorrect_tokens {tuple(bad.shape)} differ in shape.")
            d = d - w_u[:, bad].movedim(0, -1)
        return d * norm.weight.to(d.device, d.dtype)

    def logit_attrs(self, residual_stack: torch.Tensor, tokens: Any, incorrect_tokens: Any = None,
                    pos_slice: PosSlice = None) -> torch.Tensor:
        """[components, b, (pos)]: each component's direct contribution to the logit of ``tokens`` (or the logit
        difference to ``incorrect_tokens``), through the final norm with its cached scale.

        ``tokens``: an int, a single-token string, a LongTensor [] (every example), [b] (one per example) or
        [b, pos] (per example and selected position); ``incorrect_tokens`` the same shape.
        """
        dirs = self.logit_directions(tokens, incorrect_tokens).to(residual_stack.device, residual_stack.dtype)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        if dirs.ndim == 2 and scaled.ndim == 4:  # one token per example, broadcast over positions
            dirs = dirs[:, None]
        return (scaled * dirs).sum(-1)
