"""``MoRASTrace``: every intermediate state of one query through the pipeline, serialisable."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from moras_interp.atomic import atomic_write_bytes, atomic_write_text
from moras_interp.readers import ReadError, check_fields, read_json, read_safetensors


def trace_paths(path: str | Path) -> tuple[Path, Path]:
    """(JSON, safetensors) paths of a trace saved as ``path``: ``path`` + ``.json`` (``path`` itself when it
    already ends in ``.json``) and the same name with ``.safetensors``."""
    p = Path(path)
    base = p.name.removesuffix(".json")
    return p.with_name(base + ".json"), p.with_name(base + ".safetensors")


@dataclass
class MoRASTrace:
    """One query through MoRAS (or a baseline; unused stages stay empty).

    Attributes:
        question: the original question; ``id``/``label`` as given by the dataset.
        method: "moras", "no_defence", "fixed_r", "adashield_s", "ecso", ...
        prompts: the texts as sent to the model per stage ("context", "risk", "answer"), chat template applied.
        visual_context: stage-1 output; ``reformulated`` = context + " " + question.
        stage2_tokens: the greedy stage-2 tokens (N, or fewer when EOS came first); ``stage2_topk``: per step,
            the top-k (token, prob); ``stage2_steps``: how many steps stage 2 has (summed into s).
        similarity: s = cos(P, Q); ``risk``: r actually applied (after binary/fixed variants).
        displacement_norms: ‖r (u_t − h_t)‖ per steered step.
        answer: the final answer; ``stage_times``: seconds per stage (batch time / batch size);
        token_counts: prompt and generated tokens per stage.
        stage2_states: float32 [N, d] last-position post-norm states of stage 2 (optional).
        reads: what the user's reads inside ``MoRAS.trace`` saved for this query: ``"<stage>/<hook>/<step>"`` ->
            this query's value at that step (prefill values of ``[b, pos, …]`` hooks without the left padding);
            saved in the safetensors file beside the JSON.
        attention: with ``MoRASConfig.keep_attention``, {"reformulated": CrossModalAttention, "plain": ...,
            "index": this query's row in them} for the stage-2 last token; kept in memory only (save them
            with ``CrossModalAttention.save``).
    """

    question: str
    method: str = "moras"
    id: str | None = None
    label: str | None = None
    image_size: tuple[int, int] | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    visual_context: str | None = None
    reformulated: str | None = None
    stage2_tokens: list[str] = field(default_factory=list)
    stage2_topk: list[list[tuple[str, float]]] = field(default_factory=list)
    stage2_steps: int | None = None
    similarity: float | None = None
    risk: float | None = None
    displacement_norms: list[float] = field(default_factory=list)
    answer: str = ""
    stage_times: dict[str, float] = field(default_factory=dict)
    token_counts: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    stage2_states: torch.Tensor | None = None
    reads: dict[str, torch.Tensor] = field(default_factory=dict)
    attention: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stage2_states")
        d.pop("attention")
        d["reads"] = sorted(self.reads)  # the names; the tensors go to the safetensors file
        return d

    def save(self, path: str | Path) -> Path:
        """Writes ``<path>.json`` (``path`` itself when it ends in ``.json``) and, if states were kept,
        ``<path>.safetensors`` beside it, atomically. Names are taken as given: ``save("t_r0.5")`` writes
        ``t_r0.5.json`` and ``save("t_r0.99")`` writes ``t_r0.99.json`` (a suffix is appended, never replaced).
        Returns the JSON path."""
        p, st = trace_paths(path)
        d = self.to_dict() | {"stage2_states_file": None}
        tensors = {f"reads/{k}": v.contiguous() for k, v in self.reads.items()}
        if self.stage2_states is not None:
            tensors["stage2_states"] = self.stage2_states.contiguous()
        if tensors:
            atomic_write_bytes(st, save(tensors))
            d["stage2_states_file"] = st.name
        atomic_write_text(p, json.dumps(d, indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> MoRASTrace:
        """Read a trace written by :meth:`save` (same path rules); errors name the file and the field."""
        p, st = trace_paths(path)
        d = read_json(p, what="a MoRAS trace file")
        check_fields(d, {"question": str, "method": str, "answer": str}, str(p))
        states_file = d.pop("stage2_states_file", st.name if st.exists() else None)
        read_names = d.pop("reads", [])
        if not isinstance(read_names, list) or not all(isinstance(k, str) for k in read_names):
            raise ReadError(f"{p}: field 'reads' must be a list of names.")
        known = {f for f in cls.__dataclass_fields__} - {"stage2_states", "attention", "reads"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ReadError(f"{p}: unknown field(s) {unknown}: not a MoRASTrace file.")
        try:
            d["image_size"] = tuple(d["image_size"]) if d.get("image_size") else None
            d["stage2_topk"] = [[(str(t), float(v)) for t, v in step] for step in d.get("stage2_topk", [])]
        except (TypeError, ValueError) as e:
            raise ReadError(f"{p}: invalid image_size or stage2_topk ({e}).") from e
        states, reads = None, {}
        if read_names and states_file is None:
            raise ReadError(f"{p}: lists reads {read_names[:3]} but names no safetensors file holding them.")
        if states_file is not None:
            got = read_safetensors(p.parent / states_file)
            missing = [k for k in read_names if f"reads/{k}" not in got]
            if missing:
                raise ReadError(f"{p.parent / states_file} holds no tensors for the reads {missing[:3]} listed in {p}.")
            reads = {k: got[f"reads/{k}"] for k in read_names}
            states = got.get("stage2_states")
        return cls(**d, stage2_states=states, reads=reads)

    def _repr_html_(self) -> str:
        e = html.escape
        rows = [("method", self.method), ("question", self.question), ("visual context", self.visual_context or "—"),
                ("stage-2 tokens", " ".join(self.stage2_tokens) or "—"),
                ("similarity s", f"{self.similarity:.4f}" if self.similarity is not None else "—"),
                ("risk r", f"{self.risk:.4f}" if self.risk is not None else "—"),
                ("displacement", ", ".join(f"{x:.3g}" for x in self.displacement_norms) or "—"),
                ("answer", self.answer),
                ("times (s)", ", ".join(f"{k}: {v:.3f}" for k, v in self.stage_times.items()))]
        body = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
        topk = "".join(
            f"<tr><th>t={t}</th><td>{e(', '.join(f'{tok!r}: {p:.2f}' for tok, p in step))}</td></tr>"
            for t, step in enumerate(self.stage2_topk))
        return f"<table>{body}{topk}</table>"

    def summary_figure(self) -> Any:
        """Plotly bar chart of the stage-2 top-k next-token distributions with s and r in the title."""
        import plotly.graph_objects as go

        from moras_interp.viz.style import style_chart

        fig = go.Figure()
        for t, step in enumerate(self.stage2_topk):
            fig.add_bar(name=f"step {t}", x=[repr(tok) for tok, _ in step], y=[p for _, p in step])
        s = "—" if self.similarity is None else f"{self.similarity:.3f}"
        r = "—" if self.risk is None else f"{self.risk:.3f}"
        style_chart(fig, title=f"stage-2 next-token distributions (top-k per step) · s = {s} · r = {r}",
                    x_title="next token", y_title="probability", n="1 query", x_kind="category")
        fig.update_layout(barmode="group")
        return fig
