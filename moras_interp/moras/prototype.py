"""The unsafe prototype u_t: mean post-final-norm state over text-only harmful requests, per step."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from moras_interp.atomic import atomic_write_bytes
from moras_interp.moras.states import FINAL, generate_with_states

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def default_harmful_prompts(name: str = "harmful_requests.txt") -> list[str]:
    """The project's default list of text-only harmful requests (one per line, ``#`` comments)."""
    text = resources.files("moras_interp.data").joinpath(name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


PROMPTS_FILE = "harmful_requests.txt"
"""A model folder's own prototype prompt set (one request per line, ``#`` comments): a model whose vocabulary or
language the general list does not fit (the toy organism) carries it beside its weights, so every copy or
retrain of the folder finds it."""


def model_folder(model: MLLM) -> Path | None:
    """The local folder ``model`` was loaded from (``hf.config._name_or_path``, else ``model_id``), or None for a
    hub id / an in-memory model."""
    for name in (getattr(model.hf.config, "_name_or_path", None), getattr(model, "model_id", None)):
        if name and Path(str(name)).expanduser().is_dir():
            return Path(str(name)).expanduser().resolve()
    return None


def default_harmful_prompts_for(model: MLLM) -> list[str]:
    """The default prototype prompts for ``model``: the :data:`PROMPTS_FILE` in the folder it was loaded from
    (the shipped organism carries one in its own vocabulary, and so does every organism trained or copied from
    it), else the project's general list (:func:`default_harmful_prompts`)."""
    folder = model_folder(model)
    if folder is not None and (folder / PROMPTS_FILE).is_file():
        prompts = read_prompt_file(folder / PROMPTS_FILE)
        if not prompts:
            raise ValueError(f"{folder / PROMPTS_FILE} holds no prompts (one harmful request per line).")
        return prompts
    return default_harmful_prompts()


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a user file: one per line (``.txt``) or a JSON list."""
    p = Path(path)
    if p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        return [str(x) for x in data]
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


@dataclass
class UnsafePrototype:
    """u_t for t < N at one or more hooks.

    Attributes:
        states: {hook name: float32 [N, d]}; ``ln_final.hook_normalized`` is the one MoRAS uses.
        prompts: the harmful requests it was built from.
        greedy_tokens: the decoded first N tokens per prompt (what the model does with them).
        provenance: model id, N, time, etc.
    """

    states: dict[str, torch.Tensor]
    prompts: list[str] = field(default_factory=list)
    greedy_tokens: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.states[FINAL].shape[0])

    @property
    def final(self) -> torch.Tensor:
        """[N, d] u_t after the final norm."""
        return self.states[FINAL]

    @classmethod
    @torch.no_grad()
    def build(cls, model: MLLM, harmful_prompts: list[str] | None = None, n_tokens: int = 3, *,
              batch_size: int = 16, hooks: tuple[str, ...] = (FINAL,), progress: bool = True,
              system: str | None = None) -> UnsafePrototype:
        """Text-only, chat template, greedy N tokens; u_t = mean over prompts of the last-position state.

        ``harmful_prompts=None`` uses :func:`default_harmful_prompts_for` (the model folder's own
        ``harmful_requests.txt`` when it has one, as every organism does; the project's general list otherwise).
        Returns states float32 [N, d] per hook.
        """
        prompts = default_harmful_prompts_for(model) if harmful_prompts is None else list(harmful_prompts)
        if not prompts:
            raise ValueError("UnsafePrototype.build needs at least one harmful prompt.")
        hooks = tuple(dict.fromkeys((FINAL, *hooks)))
        sums = {h: torch.zeros(n_tokens, model.d_model, dtype=torch.float64) for h in hooks}
        toks: list[str] = []
        for i in tqdm(range(0, len(prompts), batch_size), desc="unsafe prototype", disable=not progress):
            chunk = prompts[i : i + batch_size]
            batch = model.prepare(None, chunk, system=system)
            gen, st = generate_with_states(model, batch, n_tokens, hooks=hooks)
            for h in hooks:
                sums[h] += st[h].double().sum(0)
            toks += model.tokenizer.batch_decode(gen.new_tokens[:, :n_tokens], skip_special_tokens=True)
        states = {h: (s / len(prompts)).float() for h, s in sums.items()}
        prov = {"model_id": model.model_id, "n_tokens": n_tokens, "n_prompts": len(prompts),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "d_model": model.d_model, "system": system or ""}
        return cls(states, prompts, toks, prov)

    def check(self, model: MLLM) -> None:
        """Raises when the prototype does not fit ``model`` (hidden size) or holds non-finite values."""
        for hook, t in self.states.items():
            if t.ndim != 2 or t.shape[0] < 1:
                raise ValueError(f"The unsafe prototype's {hook!r} tensor has shape {tuple(t.shape)}; expected [N, d].")
            if not torch.isfinite(t).all():
                raise ValueError(f"The unsafe prototype's {hook!r} states contain NaN/Inf: rebuild it with "
                                 "UnsafePrototype.build(model, ...) in float32 or bfloat16.")
        d = self.final.shape[-1]
        if d != model.d_model:
            raise ValueError(f"The unsafe prototype has hidden size {d} but {model.model_id} has {model.d_model}: "
                             "build the prototype with this model (UnsafePrototype.build(model, ...)).")

    def save(self, path: str | Path) -> Path:
        """One .safetensors file: tensors per hook + JSON metadata (no pickle)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"prompts": json.dumps(self.prompts), "greedy_tokens": json.dumps(self.greedy_tokens),
                "provenance": json.dumps(self.provenance)}
        atomic_write_bytes(p, save({k: v.contiguous() for k, v in self.states.items()}, metadata=meta))
        return p

    @classmethod
    def load(cls, path: str | Path) -> UnsafePrototype:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        states = load_file(str(path))
        if FINAL not in states:
            raise ValueError(f"{path} holds no {FINAL!r} tensor: not an UnsafePrototype file.")
        return cls(states, json.loads(meta.get("prompts", "[]")), json.loads(meta.get("greedy_tokens", "[]")),
                   json.loads(meta.get("provenance", "{}")))
