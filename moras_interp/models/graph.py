"""The nnsight backend: the edits and reads installed with ``model.hooks`` run as one nnsight intervention graph.

``model.generate(batch, backend="nnsight")`` (and ``forward`` / ``run_with_cache``) builds ONE
``model.nn.generate`` (or ``model.nn.trace``) whose body walks the decode steps with nnsight's iteration API
(``for step in tracer.iter[:n]``) and, at each step, visits the installed hook points in execution order:

* an **edit** ``fn(value, ctx)`` runs inside the graph on the step's real value and its result replaces the
  module's input/output (``envoy.output = new``), exactly what the torch-hook backend does;
* a **read** (``read=True``) is saved (``nnsight.save``) and its function is called *after* the run, in the
  order the hooks backend would have called it, on the value the model went on with (after every edit at that
  hook). Reads therefore need no side effect inside the graph, which is what remote execution requires: only
  saved values come back from a server.

A second, empty invoke saves ``tracer.result`` (the generated ids), so a generation that stops early at EOS (the
step loop then asks for a step that never runs) still returns its ids and the reads of the steps that ran.

Everything the body references is plain data (:class:`Spec`: the hook's module path and io, the function, its
steps and layouts), the nnsight envoy and the inputs, so the graph serialises as nnsight's remote path needs
(``remote="local"`` runs that round trip in-process; see ``tests/test_backends_remote.py``). Derived hook points
(per-head ``attn.hook_q/k/v/z/result``, ``ln*.hook_scale/normalized``, ``hook_resid_mid``) go through the same
getters and inverses as the torch-hook dispatcher (:mod:`moras_interp.models.derived_hooks`) on the values the graph
sees, so they edit and read exactly as there. The attention-call points (``attn.hook_rot_q`` / ``hook_rot_k`` /
``hook_attn_scores``) exist only inside the attention function, which a graph cannot address: they raise
:class:`NotInGraphError` (a ``NotImplementedError`` and ``ValueError``) naming the hook (use ``backend="hooks"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from moras_interp.models.derived_hooks import Site, get_value, put_value
from moras_interp.models.dispatch import HookContext, checked_edit, dispatcher_of, suspended
from moras_interp.models.hooks import HookPoint

BACKENDS = ("hooks", "nnsight")


class NotInGraphError(NotImplementedError, ValueError):
    """A hook point the nnsight backend cannot reach (the attention-call points); the message names it."""


def call_points_refusal(names: list[str]) -> NotInGraphError:
    """The error for attention-call hook points (``attn.hook_rot_q`` / ``hook_rot_k`` / ``hook_attn_scores``) on the
    nnsight backend (remote execution included)."""
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return NotInGraphError(
        f"{names[0]}{more} cannot be read in remote execution or on the nnsight backend (nor edited there): they "
        "live inside the attention-function call, which an nnsight graph cannot address. Use backend='hooks' (a "
        "local model), or hooks the graph can reach (e.g. 'blocks.*.attn.hook_q' / 'hook_k' before RoPE, "
        "'hook_pattern', 'hook_z').")


def check_backend(backend: str) -> str:
    """``backend`` if valid; ``ValueError`` naming the choices otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: use 'hooks' (torch hooks, the fast local path) or 'nnsight' "
                         "(nnsight intervention graphs, also remote).")
    return backend


@dataclass
class Spec:
    """One installed function as plain data for the graph.

    Attributes:
        point: the hook point (module path from the nnsight root, io, tuple index, derived view). vision: True
            for hooks that run only at the prefill of a batch with images. fn: the function. read: observer.
            steps: None = every step, "decode" = steps ≥ 1, or a frozenset of steps. layouts: passed in the
            context. stage, dtype: for finite-check errors. sink: receives ``ctx.record`` values.
    """

    point: HookPoint
    vision: bool
    fn: Callable[[torch.Tensor, HookContext], Any]
    read: bool
    steps: Any
    layouts: Any
    stage: str
    dtype: torch.dtype
    sink: Callable[[Any], None] | None = None

    @property
    def name(self) -> str:
        return self.point.name

    def active(self, step: int) -> bool:
        if self.steps is None:
            return True
        if self.steps == "decode":
            return step >= 1
        return step in self.steps

    def last_step(self) -> int | None:
        """The last step this function runs at (None: unbounded)."""
        return None if self.steps is None or self.steps == "decode" else max(self.steps, default=-1)


def _envoy(nn: Any, path: str) -> Any:
    env = nn
    for part in path.split("."):
        env = getattr(env, part)
    return env


_NEEDS_INPUT = ("scale:", "normalized:", "result:")  # output views computed from the module's input


def _site(env: Any, group: list[Spec], memo: dict[str, Any]) -> Site:
    """The call of one module side as the dispatcher would see it, from the graph's values. ``memo`` holds the
    module inputs this step already fetched (a module's input is served once; edits update it)."""
    p = group[0].point
    module = env._module
    if p.io == "input":
        memo[p.module] = env.input
        return Site(module, (memo[p.module],), {})
    if any((s.point.view or "").startswith(_NEEDS_INPUT) for s in group) and p.module not in memo:
        memo[p.module] = env.input  # before the output: nnsight serves values in execution order
    return Site(module, (memo.get(p.module),), {}, env.output)


def _visit(nn: Any, groups: list[list[Spec]], step: int, has_images: bool, reads: list[Any]) -> None:
    """One step: every group (specs of one module side, edits first) in execution order, as the dispatcher."""
    memo: dict[str, Any] = {}
    for gi, group in enumerate(groups):
        live = [(si, s) for si, s in enumerate(group) if s.active(step) and (not s.vision or (step == 0 and has_images))]
        if not live:
            continue
        p0 = live[0][1].point
        env = _envoy(nn, p0.module)
        site = _site(env, [s for _, s in live], memo)
        edited = False
        for si, s in live:
            value = get_value(s.point, site)
            if s.read:  # indices, not the spec: only plain values travel back from a remote run
                reads.append(("read", gi, si, step, value))
                continue
            sink = None if s.sink is None else (
                lambda x, gi=gi, si=si, step=step: reads.append(("record", gi, si, step, x)))
            ctx = HookContext(s.name, step, s.layouts, sink)
            new = checked_edit(s.fn, value, ctx, s.stage, s.dtype)
            if new is not None:
                put_value(s.point, site, new)
                edited = edited or s.point.view != "inplace"  # an in-place copy is already in the model
        if edited and p0.io == "input":
            env.input = memo[p0.module] = site.input()
        elif edited:
            env.output = site.out


def run_graph(nn: Any, inputs: dict[str, Any], groups: list[list[Spec]], *, generate: bool, n_steps: int,
              kwargs: dict[str, Any], remote: bool | str = False) -> tuple[Any, list[Any]]:
    """Run ``nn.generate`` (``generate=True``) or ``nn.trace`` over ``inputs`` with the specs' edits and reads.

    ``n_steps``: how many steps the loop visits (1 for a forward). Returns (result, reads) where result is the
    generate output (ids or a ``GenerateOutput``) or the forward output, and reads is a list of
    ("read" | "record", group index, spec index, step, value) in the order the values were produced (read
    functions and sinks are NOT called here; see :func:`replay_reads`).
    """
    has_images = any(k in inputs for k in ("pixel_values", "pixel_values_images"))
    opts: dict[str, Any] = {"remote": remote} if remote else {}
    if remote:  # the server has nnsight and torch but not this package: ship its code by value
        nnsight.register("moras_interp")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was never reached.*")  # early EOS: the loop's last step
        if generate:  # the same graph twice: nnsight captures the body of the `with` that opened the tracer
            with nn.generate(**kwargs, **opts) as tracer:
                reads = nnsight.save([])
                with tracer.invoke(**inputs):  # visits the steps: edits in place, reads saved
                    for step in tracer.iter[:n_steps]:
                        _visit(nn, groups, step, has_images, reads)
                with tracer.invoke():  # the whole batch: the result survives an early EOS
                    result = tracer.result.save()
        else:
            with nn.trace(**opts) as tracer:
                reads = nnsight.save([])
                with tracer.invoke(**inputs):
                    for step in tracer.iter[:n_steps]:
                        _visit(nn, groups, step, has_images, reads)
                with tracer.invoke():
                    result = tracer.result.save()
    return result, list(reads)


def replay_reads(groups: list[list[Spec]], reads: list[Any]) -> None:
    """Call each read function on its saved value and each sink on what ``ctx.record`` saved, in order."""
    for kind, gi, si, step, value in reads:
        spec = groups[gi][si]
        if kind == "read":
            spec.fn(value, HookContext(spec.name, step, spec.layouts))
        elif spec.sink is not None:
            spec.sink(value)


def installed_entries(model: Any) -> list[list[Any]]:
    """The active entries of ``model`` grouped per module side, in execution order; in each group the edits (in
    execution order of their hook points, installation order per point) come before the reads, as the torch-hook
    dispatcher runs them. Entries whose steps are over (their handle removed them) are not included."""
    groups: list[list[Any]] = []
    seen: set[int] = set()
    for p in sorted((model.hook_point(n) for n in model.hook_names()), key=lambda p: p.order):
        d = dispatcher_of(model.adapter.module(p.module), p.io)
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        edits = sorted((e for e in d.entries if not e.read), key=lambda e: e.point.order)
        groups.append(edits + [e for e in d.entries if e.read])
    return [g for g in groups if g]


def specs(model: Any) -> list[list[Spec]]:
    """The edits and reads installed on ``model`` (``model.hooks``) as :class:`Spec` groups for :func:`run_graph`."""
    decoder_cfg = getattr(model.adapter.module(model.adapter.decoder), "config", None)
    if model.remote and getattr(decoder_cfg, "_attn_implementation", None) == "moras_edit":
        raise NotImplementedError("Attention edits (moras_interp.attention.interventions) swap the local model's "
                                  "attention function and cannot travel with a remote graph; run them on a local "
                                  "model (remote=False), on either backend.")
    out = []
    for group in installed_entries(model):
        row = []
        for e in group:
            p = e.point
            if p.io == "call":
                raise call_points_refusal([p.name])
            if p.name.endswith("attn.hook_pattern") and model.attn_implementation != "eager":
                raise ValueError(f"{p.name} needs eager attention; load the model with attn_implementation='eager'.")
            row.append(Spec(p, p.name.startswith(("vision.", "projector.")), e.fn, e.read, e.steps, e.layouts,
                            e.stage(), e.dtype, e.sink))
        out.append(row)
    return out


def n_loop_steps(groups: list[list[Spec]], n_forwards: int) -> int:
    """How many steps the graph's loop must visit: up to the last step any function runs at."""
    last = [s.last_step() for g in groups for s in g]
    if any(x is None for x in last):
        return n_forwards
    return min(n_forwards, max(last, default=-1) + 1)


def check_remote(nn: Any, model_id: str) -> str:
    """The nnsight model key of a remote model; a clear error when it has none (not loaded from a Hub id).

    Whether NDIF actually hosts the model is only known to the server: a request for a model it does not serve
    fails there, with the server's message naming the model (see docs/remote.md)."""
    try:
        return str(nn.to_model_key())
    except Exception as e:  # HFValidationError for a local path or a module built here
        raise ValueError(
            f"{model_id!r} cannot run with remote=True: NDIF identifies a model by its Hugging Face Hub id (resolved "
            f"through the Hub), and resolving this one failed ({type(e).__name__}: {e}). Load it as load_model('<org>/<name>', remote=True) with a "
            "model NDIF hosts, or use remote='local' to test serialisation on local weights.") from e


def forward(model: Any, inputs: dict[str, Any]) -> Any:
    """One forward of ``model`` (an MLLM) over ``inputs`` with its installed edits and reads, as an nnsight graph;
    the model output (``.logits``)."""
    groups = specs(model)
    with suspended():
        out, reads = run_graph(model.nn, inputs, groups, generate=False, n_steps=1, kwargs={}, remote=model.remote)
    replay_reads(groups, reads)
    return out


def generate(model: Any, inputs: dict[str, Any], max_new_tokens: int, kwargs: dict[str, Any]) -> Any:
    """HF ``generate`` of ``model`` with its installed edits and reads, as one nnsight graph; HF's output."""
    groups = specs(model)
    n = n_loop_steps(groups, max_new_tokens)
    with suspended():
        out, reads = run_graph(model.nn, inputs, groups, generate=True, n_steps=n, remote=model.remote,
                               kwargs={"max_new_tokens": max_new_tokens, **kwargs})
    replay_reads(groups, reads)
    return out
