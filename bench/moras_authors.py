"""The authors' MoRAS inference loop (snumprlab/moras), transcribed to plain transformers: the speed baseline.

What their code does per query (``LLaVA/eval/figstep.py`` and the other ``LLaVA/eval/*.py`` scripts, which call
``LLaVA/utils/functions_3stage.py``), batch 1:

1. ``generate_rephrased_question``: image + context prompt, greedy, ``max_new_tokens=40``.
2. ``evaluate_rephrased_question``: image + safety prompt + context + " " + question, greedy
   ``max_new_tokens=N`` (3) with ``output_hidden_states=True``; the last layer's last-position state of every
   step that exists (generation stops at EOS) is kept. ``get_shifting_coefficient`` sums γᵗ softmax(W h_t) and
   γᵗ softmax(W u_t) over those steps, s = cos, r = 1 / (1 + exp(−k (s − x0))).
3. ``generate_final_output``: image + original question, ``model.generate(..., use_cache=False,
   shifting_params=[x0, k, r, input_ids.shape[1] + 575, prototype file])``.

Stages 1 and 3 pass ``use_cache=False``, but the cache is on anyway: ``LlavaLlamaForCausalLM.generate``
(``LLaVA/llava/model/language_model/llava_llama.py``) always calls ``super().generate(inputs_embeds=...)``
(it embeds the image itself), and the transformers they vendor forces the cache for that input
(``LLaVA/transformers/generation/utils.py``, ``generate``, step "4. Define other model kwargs": *decoder-only
models with inputs_embeds forwarding must use caching* → ``model_kwargs["use_cache"] = True``). Their steering
(``LLaVA/transformers/models/llama/modeling_llama.py``, ``LlamaModel.forward`` right after ``self.norm``)
depends on it: a forward whose input has more than one position is the prefill (step 0, target u_0), any other
is decode step ``past_key_values_length − input_token_len + 1`` (steered while < 3); each steered forward adds
``r (u_t − h)`` to the last position. (It also ``torch.load``-s the prototype file in every forward; here the
prototype is loaded once, which only favours the baseline.)

So the faithful baseline is :func:`authors_answer` with ``stage3_cache=True``: one query at a time, KV cache in
every stage, steering by a plain torch forward hook on the final norm for the prefill and the next N − 1 decode
steps. ``stage3_cache=False`` is the no-cache loop this benchmark used to call "official-style"; nobody runs it
(kept as a labelled extra). Only ``model.prepare`` (chat template + processor) and the prompt strings come from
``moras_interp``; generation is HF ``generate`` and the risk is computed here from HF's hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.moras.prompts import CONTEXT_PROMPT, reformulate, safety_query

if TYPE_CHECKING:
    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM


@dataclass
class AuthorsSetup:
    """What the authors' loop needs, loaded once.

    Attributes:
        prototype: float [N, d] unsafe prototype u_t on the model's device (steering targets and p_t).
        x0, k: sigmoid centre and slope. gamma: decay γ. system: system prompt sent in every stage (None: none).
        max_context_tokens: stage-1 budget (40 in their code).
    """

    prototype: torch.Tensor
    x0: float
    k: float
    gamma: float = 0.3
    system: str | None = None
    max_context_tokens: int = 40

    @property
    def n_tokens(self) -> int:
        return int(self.prototype.shape[0])


@dataclass
class AuthorsAnswer:
    """One query through the authors' loop: visual context, stage-2 steps that exist, s, r and the answer."""

    context: str
    n_risk_steps: int
    similarity: float
    risk: float
    answer: str


def final_norm(model: MLLM) -> torch.nn.Module:
    """The text decoder's final norm of a LLaVA-style HF model (``hf.model.language_model.norm``)."""
    lm = getattr(getattr(model.hf, "model", None), "language_model", None)
    norm = getattr(lm, "norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise ValueError(f"{type(model.hf).__name__} has no model.language_model.norm: the authors-style loop "
                         "is written for LLaVA-style models.")
    return norm


def _generate(model: MLLM, batch: Batch, max_new_tokens: int, **kwargs: Any) -> Any:
    inputs = dict(batch.to(model.device, model.dtype).inputs)
    return model.hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.tokenizer.pad_token_id, **kwargs)


def _decode(model: MLLM, sequences: torch.Tensor, prompt_len: int) -> str:
    return model.tokenizer.decode(sequences[0, prompt_len:], skip_special_tokens=True).strip()


@torch.no_grad()
def authors_similarity(states: torch.Tensor, prototype: torch.Tensor, lm_head: torch.nn.Module,
                       gamma: float) -> float:
    """``get_shifting_coefficient``'s s over the n ≤ N steps that exist. states: [n, d]; prototype: [N, d]."""
    n = states.shape[0]
    w = lm_head.weight
    q = torch.softmax(lm_head(states.to(w.device, w.dtype)).float(), dim=-1)
    p = torch.softmax(lm_head(prototype[:n].to(w.device, w.dtype)).float(), dim=-1)
    decay = gamma ** torch.arange(n, dtype=torch.float32, device=q.device)
    qs, ps = (decay[:, None] * q).sum(0), (decay[:, None] * p).sum(0)
    return float(torch.nn.functional.cosine_similarity(ps[None], qs[None]).item())


@contextmanager
def steer_final_norm(norm: torch.nn.Module, prototype: torch.Tensor, r: float) -> Iterator[None]:
    """While open, the t-th forward of ``norm`` (t < N) moves the last position: h ← h + r (u_t − h).

    With the KV cache there is one forward per generated token (t = 0 the prefill), which is the authors'
    schedule; batch 1 only, as theirs.
    """
    calls = [0]

    def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        t = calls[0]
        calls[0] += 1
        if t >= prototype.shape[0]:
            return None
        if out.shape[0] != 1:
            raise ValueError(f"The authors' steering is batch 1; got a batch of {out.shape[0]}.")
        h = out[0, -1].float()
        out = out.clone()
        out[0, -1] = (h + r * (prototype[t].to(h.device).float() - h)).to(out.dtype)
        return out

    handle = norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def authors_answer(model: MLLM, setup: AuthorsSetup, image: Any, question: str, max_new_tokens: int, *,
                   stage3_cache: bool = True) -> AuthorsAnswer:
    """One query through the authors' three stages (batch 1); ``stage3_cache=False``: the no-cache extra."""
    b1 = model.prepare([image], [CONTEXT_PROMPT], system=setup.system)
    ctx = _decode(model, _generate(model, b1, setup.max_context_tokens), b1.inputs["input_ids"].shape[1])
    b2 = model.prepare([image], [safety_query(reformulate(ctx, question))], system=setup.system)
    out = _generate(model, b2, setup.n_tokens, output_hidden_states=True, return_dict_in_generate=True)
    states = torch.stack([step[-1][0, -1] for step in out.hidden_states])  # [n ≤ N, d], last layer = after norm
    lm_head = model.hf.get_output_embeddings()
    s = authors_similarity(states, setup.prototype, lm_head, setup.gamma)
    r = 1.0 / (1.0 + math.exp(-setup.k * (s - setup.x0)))
    b3 = model.prepare([image], [question], system=setup.system)
    with steer_final_norm(final_norm(model), setup.prototype, r):
        seq = _generate(model, b3, max_new_tokens, use_cache=stage3_cache)
    return AuthorsAnswer(ctx, states.shape[0], s, r, _decode(model, seq, b3.inputs["input_ids"].shape[1]))


def authors_loop(model: MLLM, setup: AuthorsSetup, images: list[Any], questions: list[str], max_new_tokens: int,
                 *, stage3_cache: bool = True) -> list[AuthorsAnswer]:
    """:func:`authors_answer` for each query in turn."""
    return [authors_answer(model, setup, im, q, max_new_tokens, stage3_cache=stage3_cache)
            for im, q in zip(images, questions)]
