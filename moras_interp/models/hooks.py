"""The canonical hook-name table (TransformerLens style) and name utilities.

Every architecture adapter maps these names onto its own modules, so that a name means the same thing
on every supported model. Shapes use: b = batch, pos = sequence positions, d = text hidden size,
d_v = vision hidden size, heads = attention heads, q/k = query/key positions.

| name                                 | shape                     | what it is                                                        |
|--------------------------------------|---------------------------|-------------------------------------------------------------------|
| ``hook_embed``                       | [b, pos, d]               | token embeddings (``embed_tokens`` output; the placeholder's      |
|                                      |                           | embedding at image positions), as in TransformerLens / nnterp     |
| ``hook_inputs_embeds``               | [b, pos, d]               | input embeddings after image features are merged in               |
|                                      |                           | (identical to ``blocks.0.hook_resid_pre``)                        |
| ``blocks.{l}.hook_resid_pre``        | [b, pos, d]               | decoder layer l input (residual stream)                           |
| ``blocks.{l}.hook_attn_out``         | [b, pos, d]               | what the attention sublayer adds to the residual stream           |
|                                      |                           | (after Gemma3's post-attention norm)                              |
| ``blocks.{l}.attn.hook_pattern``     | [b, heads, q, k]          | attention probabilities (eager attention only; for chosen query   |
|                                      |                           | rows on any attention use ``cross_modal_attention``)              |
| ``blocks.{l}.hook_mlp_out``          | [b, pos, d]               | what the MLP sublayer adds (after Gemma3's post-feedforward norm) |
| ``blocks.{l}.hook_resid_post``       | [b, pos, d]               | decoder layer l output;                                           |
|                                      |                           | ``resid_post = resid_pre + attn_out + mlp_out``                   |
| ``ln_final.hook_out``                | [b, pos, d]               | after the final norm (with its weight), before ``lm_head``        |
|                                      |                           | (where MoRAS steers)                                              |
| ``hook_logits``                      | [b, pos, vocab]           | ``lm_head`` output                                                |
| ``vision.blocks.{l}.hook_resid_post``| [b·img, patches, d_v]     | vision encoder layer l output (Qwen2-VL: [patches, d_v], no batch |
|                                      |                           | axis)                                                             |
| ``projector.hook_out``               | [..., d]                  | image features leaving the projector (rows in projector order;    |
|                                      |                           | ``ImageLayout`` maps them onto sequence positions)                |
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

HOOK_DOC: dict[str, tuple[str, str]] = {
    "hook_embed": ("[b, pos, d]", "token embeddings (embed_tokens output; the placeholder's embedding at image "
                   "positions)"),
    "hook_inputs_embeds": ("[b, pos, d]", "input embeddings after image features are merged in "
                           "(= blocks.0.hook_resid_pre)"),
    "blocks.{l}.hook_resid_pre": ("[b, pos, d]", "decoder layer input"),
    "blocks.{l}.hook_attn_out": ("[b, pos, d]", "attention sublayer contribution to the residual"),
    "blocks.{l}.attn.hook_pattern": ("[b, heads, q, k]", "attention probabilities (eager only)"),
    "blocks.{l}.hook_mlp_out": ("[b, pos, d]", "MLP sublayer contribution to the residual"),
    "blocks.{l}.hook_resid_post": ("[b, pos, d]", "decoder layer output"),
    "ln_final.hook_out": ("[b, pos, d]", "after the final norm, with its weight (MoRAS steers here)"),
    "hook_logits": ("[b, pos, vocab]", "lm_head output"),
    "vision.blocks.{l}.hook_resid_post": ("[b*img, patches, d_v] (varies: tiles, CLS, no batch axis)",
                                          "vision encoder layer output"),
    "projector.hook_out": ("[..., d] (varies: per crop / per token)",
                           "projector output (image features entering the LM, projector order)"),
}

RENAMED: dict[str, str] = {
    "ln_final.hook_normalized": "ln_final.hook_out",
    "hook_embed": "hook_inputs_embeds",
}
"""Names whose value moved in 0.2: old name -> the name that now holds the value the old name held.

``ln_final.hook_normalized`` was the final norm's output WITH its weight (now ``ln_final.hook_out``, TransformerLens
bridge naming; in TransformerLens ``hook_normalized`` is the value before the weight). ``hook_embed`` was the input
of decoder layer 0, image features merged in (now ``hook_inputs_embeds``; ``hook_embed`` is the token embeddings,
as in TransformerLens and nnterp). Artefacts written before the rename (:func:`rename_legacy`) are read through
this table where their format version says they predate it."""


def rename_legacy(name: str) -> str:
    """The current name of a hook name written by a version before the 0.2 rename (unchanged when not renamed).

    Only for names read from an artefact whose format version predates the rename; a current artefact's
    ``ln_final.hook_normalized`` means the TransformerLens value."""
    return RENAMED.get(name, name)


def renamed_note(name: str) -> str:
    """A sentence about ``name`` if it was renamed in 0.2 (for error messages), else ``""``."""
    if name not in RENAMED:
        return ""
    return (f"{name!r} was renamed in 0.2: the value it named before is now {RENAMED[name]!r} (see 'Renamed in 0.2' "
            "in docs/hooks.md). ")


def renamed_notes(text: str) -> str:
    """Sentences about every 0.2-renamed name quoted in ``text`` (e.g. an identity diff), for refusals; else ``""``."""
    return "".join(renamed_note(old) for old in RENAMED if re.search(rf"(?<![\w.]){re.escape(old)}(?![\w.])", text))


@dataclass(frozen=True)
class HookPoint:
    """Where one canonical name lives in a concrete model.

    Attributes:
        name: canonical name, e.g. ``"blocks.3.hook_resid_post"``.
        module: dotted path of the module inside the HF model, e.g. ``"model.language_model.layers.3"``.
        io: ``"output"`` (the module's output) or ``"input"`` (its first positional / hidden-state input).
        index: element of a tuple output (e.g. 0 for ``self_attn`` -> attention output, 1 -> weights),
            ``None`` when the value is the whole output.
        order: execution-order key; nnsight requires modules to be accessed in execution order.
        shape: documented shape.
    """

    name: str
    module: str
    io: Literal["input", "output"]
    index: int | None
    order: tuple[int, ...]
    shape: str

    @property
    def template(self) -> str:
        """The name with layer numbers replaced by ``{l}``, e.g. ``blocks.{l}.hook_resid_post``."""
        return re.sub(r"\.\d+\.", ".{l}.", self.name, count=1)


def expand_names(patterns: str | list[str] | None, available: list[str]) -> list[str]:
    """Resolve names and glob patterns (``"blocks.*.hook_resid_post"``) against ``available``.

    Returns names in the order of ``available`` (which is execution order). Raises ``KeyError`` with the
    closest valid names when a plain name or a pattern matches nothing.
    """
    if patterns is None:
        return list(available)
    if isinstance(patterns, str):
        patterns = [patterns]
    wanted: set[str] = set()
    for p in patterns:
        if any(ch in p for ch in "*?["):
            hits = fnmatch.filter(available, p)
            if not hits:
                raise KeyError(f"Hook pattern {p!r} matches no hook name. {_suggest(p, available)}")
            wanted.update(hits)
        elif p in available:
            wanted.add(p)
        else:
            raise KeyError(f"Unknown hook name {p!r}. {_suggest(p, available)}")
    return [n for n in available if n in wanted]


def _suggest(name: str, available: list[str]) -> str:
    note = renamed_note(name)
    if note:
        return note + "List all names with model.hook_names()."
    close = difflib.get_close_matches(name.replace("*", "0"), available, n=3, cutoff=0.5)
    hint = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return hint + "List all names with model.hook_names(); see moras_interp.models.hooks for the table."


def hook_table_markdown(points: list[HookPoint], arch: str,
                        shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """A markdown table (name template, shape, module template) collapsing per-layer rows.

    ``shapes`` (name -> measured shape, e.g. from :func:`~moras_interp.models.validate.validate_hooks`)
    adds a column with the shape seen on a probe input (first layer's for per-layer names).
    """
    seen: dict[str, HookPoint] = {}
    counts: dict[str, int] = {}
    for p in points:
        seen.setdefault(p.template, p)
        counts[p.template] = counts.get(p.template, 0) + 1
    head = "| name | shape | module (io) |" + (" measured |" if shapes is not None else "")
    lines = [f"hook points of {arch}", "", head, "|---|---|---|" + ("---|" if shapes is not None else "")]
    for t, p in seen.items():
        mod = re.sub(r"\.\d+(\.|$)", r".{l}\1", p.module, count=1) if "{l}" in t else p.module
        idx = f"[{p.index}]" if p.index is not None else ""
        n = f" ×{counts[t]}" if counts[t] > 1 else ""
        row = f"| `{t}`{n} | {p.shape} | `{mod}` ({p.io}{idx}) |"
        if shapes is not None:
            got = shapes.get(p.name)
            row += f" {list(got)} |" if got is not None else " (eager only) |"
        lines.append(row)
    return "\n".join(lines)
