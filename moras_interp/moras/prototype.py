"""The unsafe prototype u_t: mean post-final-norm state over text-only harmful requests, per step."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save

from moras_interp.atomic import atomic_write_bytes
from moras_interp.identity import weights_fingerprint
from moras_interp.models.hooks import rename_legacy
from moras_interp.moras.presets import prompt_set_sha256
from moras_interp.moras.states import FINAL, eos_ids, step_states
from moras_interp.progress import tqdm
from moras_interp.readers import read_safetensors, safetensors_metadata

if TYPE_CHECKING:
    from moras_interp.models.mllm import MLLM


def default_harmful_prompts(name: str = "harmful_requests.txt") -> list[str]:
    """The project's default list of text-only harmful requests (one per line, ``#`` comments)."""
    text = resources.files("moras_interp.data").joinpath(name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


FORMAT = "moras_interp.unsafe_prototype/2"
"""The ``format`` metadata of prototype files. Files without one were written before the 0.2 hook rename: their
tensors are read through :data:`moras_interp.models.hooks.RENAMED` (``ln_final.hook_normalized`` there is today's
``ln_final.hook_out``, the final norm's output with its weight); a /2 file's names mean what they mean today."""

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
        states: {hook name: float32 [N, d]}; ``ln_final.hook_out`` is the one MoRAS uses.
        prompts: the harmful requests it was built from.
        greedy_tokens: the decoded first N tokens per prompt (what the model does with them).
        provenance: a dict: model id, N, time, ``prompt_sha256`` (:func:`~moras_interp.moras.presets.prompt_set_sha256`
            of ``prompts``), ``system``, ``source`` ("text", "multimodal" or "tensor"), ``eos`` and ``n_per_step``
            (how many prompts have step t; with ``eos="stop"`` a prompt that emits EOS early has fewer steps).
    """

    states: dict[str, torch.Tensor]
    prompts: list[str] = field(default_factory=list)
    greedy_tokens: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(next(iter(self.states.values())).shape[0]) if FINAL not in self.states else int(self.final.shape[0])

    @property
    def final(self) -> torch.Tensor:
        """[N, d] u_t after the final norm."""
        if FINAL not in self.states:
            raise ValueError(f"This prototype has no {FINAL!r} states (only {sorted(self.states)}); stage 2 needs them.")
        return self.states[FINAL]

    @classmethod
    @torch.no_grad()
    def build(cls, model: MLLM, harmful_prompts: list[str] | None = None, n_tokens: int = 3, *,
              prompts: str | Path | list[str] | None = None, images: list[Any] | None = None, batch_size: int = 16,
              hooks: tuple[str, ...] = (FINAL,), progress: bool = True, system: str | None = None,
              eos: str = "stop") -> UnsafePrototype:
        """Chat template, greedy N tokens; u_t = mean over prompts that have step t of the last-position state.

        ``prompts`` (or the older ``harmful_prompts``): a list, or a file (:func:`read_prompt_file`); None uses
        :func:`default_harmful_prompts_for`
        (the model folder's own ``harmful_requests.txt`` when it has one, as every organism does; the project's
        general list otherwise). ``images``: one per prompt for a prototype from multimodal harmful
        queries (default text-only). ``eos="stop"`` (the authors' code): a prompt whose greedy emits EOS before N
        tokens contributes only to its steps; ``"block"`` forces N tokens. Returns states float32 [N, d] per hook.
        """
        if prompts is not None and harmful_prompts is not None:
            raise ValueError("Give the prototype prompts once: prompts= or harmful_prompts=, not both.")
        given = prompts if prompts is not None else harmful_prompts
        if isinstance(given, (str, Path)):
            given = read_prompt_file(given)
        plist = default_harmful_prompts_for(model) if given is None else list(given)
        if not plist:
            raise ValueError("UnsafePrototype.build needs at least one harmful prompt.")
        if images is not None and len(images) != len(plist):
            raise ValueError(f"{len(images)} images for {len(plist)} prototype prompts: give one image per prompt.")
        hooks = tuple(dict.fromkeys((FINAL, *hooks)))
        sums = {h: torch.zeros(n_tokens, model.d_model, dtype=torch.float64) for h in hooks}
        counts = torch.zeros(n_tokens, dtype=torch.float64)
        toks: list[str] = []
        for i in tqdm(range(0, len(plist), batch_size), desc="unsafe prototype", disable=not progress):
            chunk = plist[i : i + batch_size]
            batch = model.prepare(None if images is None else images[i : i + batch_size], chunk, system=system)
            out = step_states(model, batch, n_tokens, hooks=hooks, eos=eos)
            for h in hooks:
                sums[h] += out.states[h].double().sum(0)  # invalid steps are 0
            counts += out.valid.double().sum(0)
            toks += [model.tokenizer.decode(row[: int(v.sum())], skip_special_tokens=True)
                     for row, v in zip(out.generation.new_tokens[:, :n_tokens], out.valid)]
        if not bool((counts > 0).all()):
            raise ValueError(f"No prototype prompt reaches step {int((counts == 0).nonzero()[0])} (all emitted EOS "
                             f"earlier; prompts per step {counts.int().tolist()}): use fewer n_tokens, other prompts, "
                             "or eos='block'.")
        states = {h: (s / counts[:, None]).float() for h, s in sums.items()}
        prov = {"model_id": model.model_id, "n_tokens": n_tokens, "n_prompts": len(plist),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "d_model": model.d_model, "system": system or "",
                "prompt_sha256": prompt_set_sha256(plist), "source": "text" if images is None else "multimodal",
                "eos": eos, "n_per_step": counts.int().tolist(), "hooks": list(hooks),
                "model_fingerprint": weights_fingerprint(model), "eos_ids": eos_ids(model)}
        return cls(states, plist, toks, prov)

    @classmethod
    def from_tensor(cls, path: str | Path, *, key: str | None = None, hook: str = FINAL,
                    system: str | None = None, prompt_sha256: str | None = None) -> UnsafePrototype:
        """A prototype from a user's tensor file: a .safetensors holding one [N, d] tensor (or ``key``), used at
        ``hook``. ``system`` / ``prompt_sha256`` record how it was made, when known (presets check them)."""
        tensors = read_safetensors(path)
        if key is None and len(tensors) != 1:
            raise ValueError(f"{path} holds {sorted(tensors)}: pass key= to choose the [N, d] prototype tensor.")
        if key is not None and key not in tensors:
            raise KeyError(f"{path} has no tensor {key!r}; it holds {sorted(tensors)}.")
        t = tensors[key] if key is not None else next(iter(tensors.values()))
        if t.ndim != 2:
            raise ValueError(f"The prototype tensor in {path} has shape {tuple(t.shape)}; expected [N, d].")
        prov = {"source": "tensor", "file": str(path), "n_tokens": int(t.shape[0]), "system": system or "",
                "prompt_sha256": prompt_sha256}
        return cls({hook: t.float().contiguous()}, [], [], prov)

    def check(self, model: MLLM) -> None:
        """Raises when the prototype does not fit ``model`` (hidden size; another checkpoint, by the
        ``model_fingerprint`` of its provenance) or holds non-finite values."""
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
        built = self.provenance.get("model_fingerprint")
        if built is not None and built != weights_fingerprint(model):
            raise ValueError(f"The unsafe prototype was built on another model than {model.model_id} (built on "
                             f"{self.provenance.get('model_id')!r}, weights fingerprint {str(built)[:12]}…, this "
                             f"model {weights_fingerprint(model)[:12]}…; the hidden sizes agree, but its states "
                             "would invert the risks): build it with this model (UnsafePrototype.build(model, ...)).")
        built_eos = self.provenance.get("eos_ids")
        if built_eos is not None and self.provenance.get("eos") == "stop" and list(built_eos) != eos_ids(model):
            raise ValueError(f"The unsafe prototype was built with EOS ids {list(built_eos)} (its prompts stop there), "
                             f"but {model.model_id}'s generation_config.eos_token_id now gives {eos_ids(model)}: the "
                             "per-step states would not match the risk steps. Restore the EOS setting or rebuild the "
                             "prototype (UnsafePrototype.build(model, ...)).")

    def save(self, path: str | Path) -> Path:
        """One .safetensors file: tensors per hook + JSON metadata (no pickle)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "prompts": json.dumps(self.prompts), "greedy_tokens": json.dumps(self.greedy_tokens),
                "provenance": json.dumps(self.provenance)}
        atomic_write_bytes(p, save({k: v.contiguous() for k, v in self.states.items()}, metadata=meta))
        return p

    @classmethod
    def load(cls, path: str | Path) -> UnsafePrototype:
        """Read a file written by :meth:`save`; errors name the file (corrupt, pickle, missing tensor/metadata).

        A file without ``format`` metadata predates the 0.2 hook rename and is read through the documented alias
        (:data:`FORMAT`); its provenance then records ``renamed_hooks`` {old: new}. Another format is refused."""
        meta = safetensors_metadata(path)
        states = read_safetensors(path)
        fmt = meta.get("format")
        renamed: dict[str, str] = {}
        if fmt is None:
            states, renamed = _legacy_states(path, states)
        elif fmt != FORMAT:
            raise ValueError(f"{path} is an UnsafePrototype file of format {fmt!r}; this version of moras_interp "
                             f"reads {FORMAT!r} (and older files without a format): upgrade moras_interp, or rebuild "
                             "the prototype with UnsafePrototype.build(model, ...).")
        if FINAL not in states:
            hint = (" It holds 'ln_final.hook_normalized', which in a current file is the TransformerLens value (the "
                    f"final norm BEFORE its weight), not where MoRAS steers ({FINAL!r})." if "ln_final.hook_normalized"
                    in states else "")
            raise ValueError(f"{path} holds no {FINAL!r} tensor: not an UnsafePrototype file.{hint}")
        try:
            prompts, toks, prov = (json.loads(meta.get(k, d)) for k, d in
                                   (("prompts", "[]"), ("greedy_tokens", "[]"), ("provenance", "{}")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: its metadata is not valid JSON ({e}): not an UnsafePrototype file.") from e
        if not (isinstance(prompts, list) and isinstance(toks, list) and isinstance(prov, dict)):
            raise ValueError(f"{path}: metadata prompts/greedy_tokens/provenance have the wrong types.")
        if renamed:
            prov = prov | {"renamed_hooks": renamed}
            if isinstance(prov.get("hooks"), list):
                prov["hooks"] = [rename_legacy(str(h)) for h in prov["hooks"]]
        return cls(states, prompts, toks, prov)


def _legacy_states(path: str | Path, states: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The states of a prototype file written before the 0.2 hook rename, under today's names, and {old: new}."""
    renamed = {k: rename_legacy(k) for k in states if rename_legacy(k) != k}
    clash = sorted(new for new in renamed.values() if new in states)
    if clash:
        raise ValueError(f"{path} (written before the 0.2 hook rename, no format metadata) holds both an old and a "
                         f"current name for {clash}: it cannot be read unambiguously. Rebuild the prototype with "
                         "UnsafePrototype.build(model, ...).")
    return {rename_legacy(k): v for k, v in states.items()}, renamed
