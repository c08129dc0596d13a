"""The nnsight side of :class:`~moras_interp.models.mllm.MLLM`: trace access by hook name and backend choice.

* Free-form nnsight traces: ``model.trace(batch)`` with ``model.read(name)`` / ``model.write(name, value)``
  inside it (plain and derived hook points, :mod:`moras_interp.models.trace_access`), ``model.envoy(path)``.
* The execution backend of ``forward`` / ``run_with_cache`` / ``generate`` / ``collect_activations``:
  ``"hooks"`` (torch hooks, the fast local path) or ``"nnsight"`` (the installed edits and reads run as one
  nnsight intervention graph, :mod:`moras_interp.models.graph`; the only backend for ``remote``), chosen per call
  (``backend=``), per block (``model.using("nnsight")``) or per model (``load_model(..., backend=)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.models import graph as _graph
from moras_interp.models import interventions as _iv
from moras_interp.models.hooks import HookPoint
from moras_interp.models.trace_access import trace_read, trace_write

if TYPE_CHECKING:
    from moras_interp.models.batch import Batch
    from moras_interp.models.mllm import MLLM


class BackendAccess:
    """Mixin for :class:`~moras_interp.models.mllm.MLLM` (see the module docstring)."""

    backend: str
    remote: bool | str

    @property
    def on_meta(self: MLLM) -> bool:
        """True when the weights are not here (``load_model(..., remote=True)``: built on the meta device)."""
        return self.device.type == "meta"

    # ------------------------------------------------------------------ nnsight access
    def envoy(self: MLLM, module_path: str) -> Any:
        """The nnsight Envoy of a module path (``"model.language_model.layers.3"``)."""
        env = self.nn
        for part in module_path.split("."):
            env = getattr(env, part)
        return env

    def trace(self: MLLM, batch: Batch | dict[str, Any], **kwargs: Any) -> AbstractContextManager[Any]:
        """An nnsight trace over ``batch``; inside it use :meth:`read` / :meth:`write` by hook name."""
        if self.remote:
            kwargs.setdefault("remote", self.remote)
        return self.nn.trace(**self._inputs(batch), **kwargs)

    def read(self: MLLM, name: str) -> Any:
        """Inside a trace: the (proxy) value of a hook. Access hooks in execution order."""
        p = self.hook_point(name)
        self._check_pattern(p)
        if p.io == "output" and _iv.is_edited(self, p.name):
            raise ValueError(
                f"model.read({name!r}) inside an nnsight trace sees the value BEFORE the model.hooks edit installed "
                "at this hook (nnsight reads a module's output before torch hooks run). Use "
                "model.run_with_cache(...) inside the hooks block, or make the edit in the trace with model.write.")
        return trace_read(self, p)

    def write(self: MLLM, name: str, value: Any) -> None:
        """Inside a trace: replace a hook's value (same shape)."""
        trace_write(self, self.hook_point(name), value)

    def _check_pattern(self: MLLM, p: HookPoint) -> None:
        if p.name.endswith(("attn.hook_pattern", "attn.hook_attn_scores")) and self.attn_implementation != "eager":
            raise ValueError(
                f"{p.name} needs eager attention but this model runs {self.attn_implementation!r}. Load it with "
                "load_model(..., attn_implementation='eager'), or use moras_interp.cross_modal_attention(), "
                "which computes exact attention rows under sdpa too."
            )

    # ------------------------------------------------------------------ backends
    @contextmanager
    def using(self: MLLM, backend: str | None) -> Iterator[None]:
        """Inside the block, forward / run_with_cache / generate default to ``backend`` ("hooks" or "nnsight";
        None keeps the current default). Code written against ``model.hooks`` runs unchanged on either."""
        if backend is None:
            yield
            return
        before, self.backend = self.backend, self._backend(backend)
        try:
            yield
        finally:
            self.backend = before

    def _backend(self: MLLM, backend: str | None) -> str:
        """The backend a call runs on (``backend`` or the default), checked against where the weights are."""
        b = _graph.check_backend(backend or ("nnsight" if self.remote else self.backend))
        if self.remote and b != "nnsight":
            raise ValueError(f"This model runs remotely (remote={self.remote!r}): only backend='nnsight' can run it.")
        if self.remote is True:
            _graph.check_remote(self.nn, self.model_id)
        elif self.on_meta:
            raise ValueError(f"{self.model_id}: the weights are on the meta device (loaded with remote=True); it "
                             "can only run remotely (remote=True).")
        return b

    def _logits(self: MLLM, batch: Batch | dict[str, Any], backend: str | None) -> torch.Tensor:
        """One forward with the installed edits and reads, on the chosen backend; logits [b, pos, vocab]."""
        inputs = self._inputs(batch)
        if self._backend(backend) == "hooks":
            return self.hf(**inputs).logits
        return _graph.forward(self, inputs).logits

    def _generate(self: MLLM, inputs: dict[str, Any], max_new_tokens: int, do_sample: bool, kwargs: dict[str, Any],
                  backend: str | None) -> Any:
        """HF ``generate`` with the installed edits and reads, on the chosen backend (HF's output)."""
        if self._backend(backend) == "hooks":
            return self.hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs)
        return _graph.generate(self, inputs, max_new_tokens, {"do_sample": do_sample, **kwargs})
