"""Our hook names next to TransformerLens (4.x ``TransformerBridge``, 3.x ``HookedTransformer``) and nnterp.

The table is rendered into ``docs/hooks.md`` by :mod:`moras_interp.models.hook_docs`; every name of
:data:`~moras_interp.models.hooks.HOOK_DOC` has a row (``tests/test_hook_rename.py`` checks it). Sources: the
TransformerLens bridge components' ``hook_aliases`` (``BlockBridge``, ``AttentionBridge``, ``NormalizationBridge``,
``MLPBridge`` / ``GatedMLPBridge``, ``EmbeddingBridge``), HookedTransformer's hook points, and nnterp's
``StandardizedTransformer`` accessors. "—" means the library has no name for it (a plain nnsight module path
is given for nnterp where one reads the same value, flat over heads).
"""

from __future__ import annotations

from moras_interp.models.hooks import RENAMED

EQUIVALENTS: dict[str, tuple[str, str, str]] = {
    # ours: (TransformerBridge 4.x, HookedTransformer 3.x, nnterp)
    "hook_embed": ("`embed.hook_out` (alias `hook_embed`)", "`hook_embed`",
                   "`token_embeddings` (= `embed_tokens.output`)"),
    "hook_inputs_embeds": ("— (= `blocks.0.hook_in`)", "— (= `blocks.0.hook_resid_pre`)", "`layers_input[0]`"),
    "blocks.{l}.hook_resid_pre": ("`blocks.{l}.hook_in` (alias `hook_resid_pre`)", "`blocks.{l}.hook_resid_pre`",
                                  "`layers_input[l]`"),
    "blocks.{l}.ln1.hook_scale": ("`blocks.{l}.ln1.hook_scale`", "`blocks.{l}.ln1.hook_scale`", "—"),
    "blocks.{l}.ln1.hook_normalized": ("`blocks.{l}.ln1.hook_normalized`", "`blocks.{l}.ln1.hook_normalized`", "—"),
    "blocks.{l}.attn.hook_q": ("`blocks.{l}.attn.q.hook_out` (alias `attn.hook_q`)", "`blocks.{l}.attn.hook_q`",
                               "— (`attentions[l].q_proj.output`)"),
    "blocks.{l}.attn.hook_k": ("`blocks.{l}.attn.k.hook_out` (alias `attn.hook_k`)", "`blocks.{l}.attn.hook_k`",
                               "— (`attentions[l].k_proj.output`)"),
    "blocks.{l}.attn.hook_v": ("`blocks.{l}.attn.v.hook_out` (alias `attn.hook_v`)", "`blocks.{l}.attn.hook_v`",
                               "— (`attentions[l].v_proj.output`)"),
    "blocks.{l}.attn.hook_rot_q": ("`blocks.{l}.attn.hook_rot_q`", "`blocks.{l}.attn.hook_rot_q`", "—"),
    "blocks.{l}.attn.hook_rot_k": ("`blocks.{l}.attn.hook_rot_k`", "`blocks.{l}.attn.hook_rot_k`", "—"),
    "blocks.{l}.attn.hook_attn_scores": ("`blocks.{l}.attn.hook_attn_scores`", "`blocks.{l}.attn.hook_attn_scores`",
                                         "—"),
    "blocks.{l}.attn.hook_pattern": ("`blocks.{l}.attn.hook_pattern`", "`blocks.{l}.attn.hook_pattern`",
                                     "`attention_probabilities[l]` (`enable_attention_probs=True`)"),
    "blocks.{l}.attn.hook_z": ("`blocks.{l}.attn.o.hook_in` (alias `attn.hook_z`)", "`blocks.{l}.attn.hook_z`",
                               "— (`attentions[l].o_proj.input`)"),
    "blocks.{l}.attn.hook_result": ("— (its alias `attn.hook_result` is `attn.hook_out`, summed over heads)",
                                    "`blocks.{l}.attn.hook_result` (`use_attn_result=True`)", "—"),
    "blocks.{l}.hook_attn_out": ("`blocks.{l}.attn.hook_out` (alias `hook_attn_out`)", "`blocks.{l}.hook_attn_out`",
                                 "`attentions_output[l]`"),
    "blocks.{l}.hook_resid_mid": ("`blocks.{l}.ln2.hook_in` (alias `hook_resid_mid`)", "`blocks.{l}.hook_resid_mid`",
                                  "—"),
    "blocks.{l}.ln2.hook_scale": ("`blocks.{l}.ln2.hook_scale`", "`blocks.{l}.ln2.hook_scale`", "—"),
    "blocks.{l}.ln2.hook_normalized": ("`blocks.{l}.ln2.hook_normalized`", "`blocks.{l}.ln2.hook_normalized`", "—"),
    "blocks.{l}.mlp.hook_pre": ("`blocks.{l}.mlp.gate.hook_out` (alias `mlp.hook_pre`)", "`blocks.{l}.mlp.hook_pre`",
                                "— (`mlps[l].gate_proj.output`)"),
    "blocks.{l}.mlp.hook_pre_linear": ("`blocks.{l}.mlp.in.hook_out` (alias `mlp.hook_pre_linear`)",
                                       "`blocks.{l}.mlp.hook_pre_linear`", "— (`mlps[l].up_proj.output`)"),
    "blocks.{l}.mlp.hook_post": ("`blocks.{l}.mlp.out.hook_in` (alias `mlp.hook_post`)", "`blocks.{l}.mlp.hook_post`",
                                 "— (`mlps[l].down_proj.input`)"),
    "blocks.{l}.hook_mlp_out": ("`blocks.{l}.mlp.hook_out` (alias `hook_mlp_out`)", "`blocks.{l}.hook_mlp_out`",
                                "`mlps_output[l]`"),
    "blocks.{l}.hook_resid_post": ("`blocks.{l}.hook_out` (alias `hook_resid_post`)", "`blocks.{l}.hook_resid_post`",
                                   "`layers_output[l]`"),
    "ln_final.hook_scale": ("`ln_final.hook_scale`", "`ln_final.hook_scale`", "—"),
    "ln_final.hook_normalized": ("`ln_final.hook_normalized`", "`ln_final.hook_normalized`", "—"),
    "ln_final.hook_out": ("`ln_final.hook_out`", "— (no hook after the weight)", "`ln_final.output`"),
    "hook_logits": ("`unembed.hook_out`", "— (the return value)", "`logits`"),
    "vision.blocks.{l}.hook_resid_post": ("— (inside the `vision_encoder` component)", "— (no vision tower)", "—"),
    "projector.hook_out": ("`vision_projector.hook_out`", "— (no vision tower)", "—"),
}
"""Our name -> (bridge, HookedTransformer, nnterp). Rows for names an architecture does not have are harmless."""

NOTES = """\
We follow the bridge where it and HookedTransformer differ. Names both have with the same meaning are written
the HookedTransformer way, which the bridge accepts as aliases of its component names (`hook_resid_pre` =
`blocks.{l}.hook_in`); the weighted final-norm output has only a bridge name, `ln_final.hook_out` (in
HookedTransformer the final norm has no hook after its weight, and with the default `fold_ln=True` the weight is
folded into `W_U`). The one exception is `attn.hook_result`: the bridge's alias is the attention output summed
over heads (our `hook_attn_out`), so we keep HookedTransformer's per-head meaning, [b, pos, heads, d].

* Values equal HookedTransformer's only without weight processing (`HookedTransformer.from_pretrained_no_processing`):
  the default `from_pretrained` folds norms, centres writing weights and the unembedding, which changes
  activations. TransformerLens folds Gemma's `sqrt(d)` embedding scale into `W_E`, so its `hook_embed` is scaled
  like ours (our Gemma3 / PaliGemma `embed_tokens` are scaled embedding modules).
* `hook_inputs_embeds` and the `vision.*` / `projector.*` names are ours (VLM-specific): the image features merged
  into the sequence, what decoder layer 0 receives.
* nnterp's `attentions_output[l]` / `mlps_output[l]` are, like ours, what is added to the residual stream (after
  Gemma3's post-sublayer norms). "(`attentions[l].q_proj.output`)" etc. are nnsight module paths on nnterp's
  renamed model reading the same value flat over heads ([b, pos, heads·d_head], before RoPE for q/k); recent
  nnterp versions add more accessors (`model.internals.status()` lists them).
"""


def equivalents_markdown() -> str:
    """The docs/hooks.md section: one row per name, then the notes."""
    rows = "".join(f"| `{ours}` | {b} | {h} | {n} |\n" for ours, (b, h, n) in EQUIVALENTS.items())
    return ("\n## TransformerLens and nnterp equivalents\n\n| ours | TransformerBridge (4.x) | HookedTransformer "
            "(3.x) | nnterp |\n|---|---|---|---|\n" + rows + "\n" + NOTES)


def renamed_markdown() -> str:
    """The docs/hooks.md section "Renamed in 0.2": old -> new names and what each artefact does with old names."""
    meaning = {"ln_final.hook_normalized": "x / rms (x − mean over std for LayerNorm) BEFORE the weight, as in "
               "TransformerLens (with the per-head hooks; where a model lacks it, the KeyError names "
               "`ln_final.hook_out`)",
               "hook_embed": "the token embeddings (`embed_tokens` output), as in TransformerLens and nnterp"}
    rows = "".join(f"| `{old}` | `{new}` | {meaning[old]} |\n" for old, new in RENAMED.items())
    return f"""
## Renamed in 0.2

So that every TransformerLens name means what it means in TransformerLens, two names changed value in 0.2.
Code that asked for the old value must use the new name (MoRAS, steering and the CLI already do):

| name up to 0.1 | its value is now | the old name now means |
|---|---|---|
{rows}
There is no warning when code uses `ln_final.hook_normalized` or `hook_embed` (a TransformerLens user expects
the TransformerLens value); `moras_interp.models.hooks.RENAMED` lists the renames. Files written before 0.2:

* unsafe prototypes (`.safetensors` without `format` metadata) are read through the rename: their
  `ln_final.hook_normalized` tensor is today's `ln_final.hook_out` (provenance `renamed_hooks` records it). Files
  from 0.2 on carry `format = moras_interp.unsafe_prototype/2` and are read as they are.
* activation stores of format `moras_interp.activation_store/1` that collected or edited a renamed name are
  refused (the error names the manifest, the old and new names and the fix: collect again with the new name);
  other /1 stores are read as before.
* MoRAS setup folders (`setup_provenance.json` with the old name) and evaluation / ablation run folders are
  refused by their identity check, which names the rename; pass `--overwrite` or use a new folder.
* direction files are unaffected: they hold per-layer names only (`blocks.{{l}}.…`).
"""
