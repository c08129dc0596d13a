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

Per-head and intermediate TransformerLens names (all layers ``l``; shapes with d_head, kv_heads, d_mlp):
``blocks.{l}.ln1.hook_scale`` [b, pos, 1] / ``ln1.hook_normalized`` [b, pos, d] (``x / sqrt(mean(x²) + eps)``,
before the weight), ``attn.hook_q`` [b, pos, heads, d_head], ``attn.hook_k`` / ``hook_v`` [b, pos, kv_heads,
d_head], ``attn.hook_rot_q`` / ``hook_rot_k`` (after RoPE), ``attn.hook_attn_scores`` [b, heads, q, k] (eager),
``attn.hook_z`` [b, pos, heads, d_head], ``attn.hook_result`` [b, pos, heads, d] (only when named,
:data:`ON_REQUEST`), ``hook_resid_mid`` [b, pos, d], ``ln2.hook_scale`` / ``ln2.hook_normalized``,
``mlp.hook_pre`` / ``hook_pre_linear`` / ``hook_post`` [b, pos, d_mlp], ``ln_final.hook_scale`` /
``ln_final.hook_normalized`` (before the weight) and ``ln_final.hook_out`` (after it). Where each lives:
``models/adapters/tl_points.py``; derived values and their inverses: ``models/derived_hooks.py`` and
``models/attn_call.py``; the full table with meanings: ``docs/hooks.md``.
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
    # TransformerLens per-head and intermediate hooks (models/adapters/tl_points.py)
    "blocks.{l}.ln1.hook_scale": ("[b, pos, 1]", "pre-attention norm: sqrt(mean(x^2) + eps) (LayerNorm: of x - mean)"),
    "blocks.{l}.ln1.hook_normalized": ("[b, pos, d]", "pre-attention norm: x / scale, before the weight"),
    "blocks.{l}.attn.hook_q": ("[b, pos, heads, d_head]", "q_proj output per head (before Gemma3's q_norm and RoPE)"),
    "blocks.{l}.attn.hook_k": ("[b, pos, kv_heads, d_head]", "k_proj output per KV head (GQA: not expanded)"),
    "blocks.{l}.attn.hook_v": ("[b, pos, kv_heads, d_head]", "v_proj output per KV head (GQA: not expanded)"),
    "blocks.{l}.attn.hook_rot_q": ("[b, pos, heads, d_head]", "query after (q_norm and) RoPE / mRoPE, as attention uses it"),
    "blocks.{l}.attn.hook_rot_k": ("[b, pos, kv_heads, d_head]", "keys of the new positions after (k_norm and) RoPE"),
    "blocks.{l}.attn.hook_attn_scores": ("[b, heads, q, k]", "pre-softmax scores, scaled, masked with -inf (eager only)"),
    "blocks.{l}.attn.hook_z": ("[b, pos, heads, d_head]", "per-head attention output (o_proj input)"),
    "blocks.{l}.attn.hook_result": ("[b, pos, heads, d]", "per-head o_proj contribution, no b_O (only when named)"),
    "blocks.{l}.hook_resid_mid": ("[b, pos, d]", "resid_pre + attn_out (input of the pre-MLP norm)"),
    "blocks.{l}.ln2.hook_scale": ("[b, pos, 1]", "pre-MLP norm scale (Gemma3: pre_feedforward_layernorm)"),
    "blocks.{l}.ln2.hook_normalized": ("[b, pos, d]", "pre-MLP norm: x / scale, before the weight"),
    "blocks.{l}.mlp.hook_pre": ("[b, pos, d_mlp]", "gate_proj output (before the activation)"),
    "blocks.{l}.mlp.hook_pre_linear": ("[b, pos, d_mlp]", "up_proj output"),
    "blocks.{l}.mlp.hook_post": ("[b, pos, d_mlp]", "act(gate) * up: the down_proj input"),
    "ln_final.hook_scale": ("[b, pos, 1]", "final norm scale sqrt(mean(x^2) + eps)"),
    "ln_final.hook_normalized": ("[b, pos, d]", "final norm: x / scale, before the weight"),
    "ln_final.hook_out": ("[b, pos, d]", "after the final norm, weight applied (MoRAS steers here)"),
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
        io: ``"output"`` (the module's output), ``"input"`` (its first positional / hidden-state input) or
            ``"call"`` (the attention-function call inside an attention module: post-RoPE query/key, scores).
        index: element of a tuple output (e.g. 0 for ``self_attn`` -> attention output, 1 -> weights),
            ``None`` when the value is the whole output.
        order: execution-order key; nnsight requires modules to be accessed in execution order.
        shape: documented shape.
        view: ``None`` for the module's value itself, else how the value is derived from it and written back
            (``"heads:4"``, ``"scale:rms"``, ``"normalized:gemma"``, ``"result:4"``, ``"inplace"``, ``"rot_q"``,
            ``"rot_k"``, ``"scores"``; see :mod:`moras_interp.models.derived_hooks`).
    """

    name: str
    module: str
    io: Literal["input", "output", "call"]
    index: int | None
    order: tuple[int, ...]
    shape: str
    view: str | None = None

    @property
    def derived(self) -> bool:
        """True for a value computed from the module's input/output (see ``models/derived_hooks.py``)."""
        return self.view is not None

    @property
    def template(self) -> str:
        """The name with layer numbers replaced by ``{l}``, e.g. ``blocks.{l}.hook_resid_post``."""
        return re.sub(r"\.\d+\.", ".{l}.", self.name, count=1)


ON_REQUEST: tuple[str, ...] = ("attn.hook_result",)
"""Name endings computed only when asked (``attn.hook_result`` is [b, pos, heads, d] per layer): left out of
``names=None`` (every hook) and of globs that do not spell the ending; an exact name or a glob such as
``"blocks.*.attn.hook_result"`` selects them."""


def on_request(name: str) -> bool:
    """True for hook names computed only when asked for explicitly (see :data:`ON_REQUEST`)."""
    return name.endswith(ON_REQUEST)


def expand_names(patterns: str | list[str] | None, available: list[str]) -> list[str]:
    """Resolve names and glob patterns (``"blocks.*.hook_resid_post"``) against ``available``.

    Returns names in the order of ``available`` (which is execution order). ``None`` means every name except
    the on-request ones (:data:`ON_REQUEST`); a glob selects those only if it spells their ending. Raises
    ``KeyError`` with the closest valid names when a plain name or a pattern matches nothing.
    """
    if patterns is None:
        return [n for n in available if not on_request(n)]
    if isinstance(patterns, str):
        patterns = [patterns]
    wanted: set[str] = set()
    for p in patterns:
        if any(ch in p for ch in "*?["):
            hits = fnmatch.filter(available, p)
            spelled = [h for h in hits if not on_request(h) or any(p.endswith(e) for e in ON_REQUEST)]
            if hits and not spelled:
                raise KeyError(f"Hook pattern {p!r} only matches hooks computed on request ({', '.join(ON_REQUEST)}); "
                               "spell the ending out, e.g. 'blocks.*.attn.hook_result'.")
            if not hits:
                raise KeyError(f"Hook pattern {p!r} matches no hook name. {_suggest(p, available)}")
            wanted.update(spelled)
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
        view = f", {p.view}" if p.view is not None else ""
        n = f" ×{counts[t]}" if counts[t] > 1 else ""
        row = f"| `{t}`{n} | {p.shape} | `{mod}` ({p.io}{idx}{view}) |"
        if shapes is not None:
            got = shapes.get(p.name)
            missing = " (on request) |" if on_request(p.name) else " (eager only) |"
            row += f" {list(got)} |" if got is not None else missing
        lines.append(row)
    return "\n".join(lines)
