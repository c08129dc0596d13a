"""Contrastive directions, one vector per layer: difference of means, PCA of paired differences, probes.

    d = make_direction("diff_of_means", acts_unsafe, acts_safe, layers=[10, 11], hook="blocks.{l}.hook_resid_post")
    d.save("refusal.safetensors"); d = Direction.load("refusal.safetensors")
    scores = d.project(acts_layer_10, layer=10)                     # [..., d] -> [...]

Inputs are activations of two classes per layer, acts_a [L, n_a, d] and acts_b [L, n_b, d] (a plain
[n, d] is read as one layer); every method points from class b towards class a. Methods are pluggable
through ``DIRECTION_METHODS`` / ``register_direction_method`` (like steering-vectors' aggregators): a
method is ``fn(acts_a, acts_b, **kw) -> Direction``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from moras_interp.atomic import atomic_write_bytes
from moras_interp.readers import ReadError, check_fields, read_safetensors, safetensors_metadata

DEFAULT_HOOK = "blocks.{l}.hook_resid_post"
_META_KEY = "moras_interp.direction"


@dataclass
class Direction:
    """Per-layer direction vectors.

    vectors: float32 [L, d], row i belongs to layer ``layers[i]``; hook: name template with ``{l}``;
    method: how it was made; normalised: rows are unit-norm (else raw magnitude); provenance: free-form
    JSON-able dict (model id, dataset fingerprint, n per class, positions, created timestamp, ...).
    """

    vectors: torch.Tensor
    layers: list[int]
    hook: str = DEFAULT_HOOK
    method: str = "custom"
    normalised: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = torch.as_tensor(self.vectors).detach().to("cpu", torch.float32).contiguous()
        if self.vectors.ndim != 2:
            raise ValueError(f"Direction.vectors must be [L, d], got shape {tuple(self.vectors.shape)}.")
        self.layers = [int(l) for l in self.layers]
        if len(self.layers) != self.vectors.shape[0]:
            raise ValueError(f"{len(self.layers)} layers given for {self.vectors.shape[0]} vectors.")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"duplicate layers in {self.layers}.")
        if "{l}" not in self.hook:
            raise ValueError(f"hook must be a template containing '{{l}}', got {self.hook!r}.")

    @property
    def d_model(self) -> int:
        """Feature size d."""
        return int(self.vectors.shape[1])

    def hook_name(self, layer: int) -> str:
        """The concrete hook name of ``layer`` (e.g. "blocks.3.hook_resid_post")."""
        return self.hook.format(l=layer)

    def for_layer(self, layer: int) -> torch.Tensor:
        """The vector of ``layer``: float32 [d]."""
        if layer not in self.layers:
            raise KeyError(f"no vector for layer {layer}; this direction has layers {self.layers}.")
        return self.vectors[self.layers.index(layer)]

    def project(self, acts: torch.Tensor, layer: int, *, unit: bool = False) -> torch.Tensor:
        """acts [..., d] · v_layer -> [...] (float32 unless acts is float64).

        With ``unit=True`` (or a normalised direction) this is the scalar projection onto the direction.
        """
        v = self.for_layer(layer)
        if acts.shape[-1] != v.shape[0]:
            raise ValueError(f"acts have d={acts.shape[-1]} but the direction has d={v.shape[0]}.")
        if unit:
            v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        dtype = torch.float64 if acts.dtype == torch.float64 else torch.float32
        return acts.to(dtype) @ v.to(acts.device, dtype)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one .safetensors file (tensor ``vectors`` + JSON metadata in the header), atomically."""
        path = Path(path)
        meta = {"layers": self.layers, "hook": self.hook, "method": self.method, "normalised": self.normalised,
                "provenance": self.provenance}
        try:
            text = json.dumps(meta, sort_keys=True)
        except TypeError as e:
            raise TypeError(f"Direction.provenance must be JSON-serialisable: {e}") from e
        return atomic_write_bytes(path, save({"vectors": self.vectors}, metadata={_META_KEY: text}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Direction:
        """Read a file written by ``save`` (safetensors only; nothing is unpickled)."""
        header = safetensors_metadata(path)
        if _META_KEY not in header:
            raise ValueError(f"{path} is not a moras_interp Direction file (no {_META_KEY!r} metadata).")
        try:
            meta = json.loads(header[_META_KEY])
            check_fields(meta, {"layers": list, "hook": str, "method": str, "normalised": bool,
                                "provenance": dict}, f"{path} (metadata)")
        except json.JSONDecodeError as e:
            raise ReadError(f"{path}: its {_META_KEY!r} metadata is not valid JSON ({e}).") from e
        vectors = read_safetensors(path, ["vectors"])["vectors"]
        return cls(vectors=vectors, layers=meta["layers"], hook=meta["hook"], method=meta["method"],
                   normalised=meta["normalised"], provenance=meta["provenance"])


def _as_layers(acts_a: torch.Tensor, acts_b: torch.Tensor, *, paired: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to float64 [L, n, d] (an [n, d] input becomes L=1)."""
    out = []
    for name, x in (("a", acts_a), ("b", acts_b)):
        x = torch.as_tensor(x).detach().to("cpu", torch.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"class {name} activations must be [L, n, d] or [n, d], got {tuple(x.shape)}.")
        if x.shape[1] == 0:
            raise ValueError(f"class {name} has 0 examples.")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = ", ".join(str(int(i)) for i in torch.nonzero(bad)[0])
            raise ValueError(f"activations contain NaN/Inf at class {name} [layer, example, feature] = [{idx}]: "
                             "check dtype overflow (use float32) or the input.")
        out.append(x)
    a, b = out
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"class a is [L={a.shape[0]}, n, d={a.shape[2]}] but class b is [L={b.shape[0]}, n, d={b.shape[2]}].")
    if paired and a.shape[1] != b.shape[1]:
        raise ValueError(f"paired differences need the same n per class, got n_a={a.shape[1]}, n_b={b.shape[1]}.")
    return a, b


def _finish(vectors: torch.Tensor, a: torch.Tensor, b: torch.Tensor, method: str, layers: list[int] | None,
            hook: str, normalise: bool, provenance: dict[str, Any] | None, extra: dict[str, Any]) -> Direction:
    """Normalise rows of vectors [L, d] if asked and wrap them in a Direction with provenance."""
    if normalise:
        norms = vectors.norm(dim=-1, keepdim=True)
        if bool((norms == 0).any()):
            warnings.warn(f"{method}: zero vector at layer index {torch.nonzero(norms[:, 0] == 0)[:, 0].tolist()}; "
                          "left as zeros.", stacklevel=3)
        vectors = vectors / norms.clamp_min(torch.finfo(vectors.dtype).tiny)
    layers = list(range(a.shape[0])) if layers is None else list(layers)
    prov = {"n_a": int(a.shape[1]), "n_b": int(b.shape[1]), "d": int(a.shape[2]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra, **(provenance or {})}
    return Direction(vectors=vectors, layers=layers, hook=hook, method=method, normalised=normalise, provenance=prov)


def diff_of_means(acts_a: torch.Tensor, acts_b: torch.Tensor, *, layers: list[int] | None = None,
                  hook: str = DEFAULT_HOOK, normalise: bool = True,
                  provenance: dict[str, Any] | None = None) -> Direction:
    """mean(acts_a) − mean(acts_b) per layer: acts_a [L, n_a, d], acts_b [L, n_b, d] -> vectors [L, d].

    ``normalise=False`` ("raw") keeps the magnitude of the mean difference.
    """
    a, b = _as_layers(acts_a, acts_b)
    return _finish(a.mean(1) - b.mean(1), a, b, "diff_of_means", layers, hook, normalise, provenance, {})


def paired_difference_pcs(acts_a: torch.Tensor, acts_b: torch.Tensor, k: int = 1, *,
                          center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k principal directions of the paired differences a_i − b_i, per layer.

    acts_a, acts_b: [L, n, d] (same n, example i of a paired with example i of b). Returns
    (components float64 [L, k, d] unit-norm, explained-variance ratios float64 [L, k]). Uncentred by
    default (the second moment of the differences, so a consistent shift is the first component, as in
    steering-vectors' PCA aggregator); ``center=True`` gives classical PCA. Each component's sign is
    chosen so the mean difference projects positively on it.
    """
    a, b = _as_layers(acts_a, acts_b, paired=True)
    diffs = a - b                                                 # [L, n, d]
    if not 1 <= k <= min(diffs.shape[1], diffs.shape[2]):
        raise ValueError(f"k must be in [1, min(n, d)] = [1, {min(diffs.shape[1], diffs.shape[2])}], got {k}.")
    x = diffs - diffs.mean(1, keepdim=True) if center else diffs
    _, s, vh = torch.linalg.svd(x, full_matrices=False)            # vh [L, min(n, d), d]
    comps, var = vh[:, :k], s**2
    ratio = (var[:, :k] / var.sum(-1, keepdim=True).clamp_min(torch.finfo(var.dtype).tiny))
    mean_diff = diffs.mean(1)                                      # [L, d]
    align = torch.einsum("lkd,ld->lk", comps, mean_diff)
    # deterministic sign when the mean difference is orthogonal: largest-magnitude coordinate positive
    fallback = torch.gather(comps, 2, comps.abs().argmax(-1, keepdim=True))[..., 0]
    sign = torch.where(align.abs() > 1e-12 * mean_diff.norm(dim=-1, keepdim=True), align.sign(), fallback.sign())
    return comps * sign[..., None], ratio


def pca_of_paired_differences(acts_a: torch.Tensor, acts_b: torch.Tensor, k: int = 1, *,
                              layers: list[int] | None = None, hook: str = DEFAULT_HOOK, normalise: bool = True,
                              center: bool = False, provenance: dict[str, Any] | None = None) -> Direction:
    """First principal component of the paired differences, per layer: [L, n, d] x2 -> vectors [L, d].

    The component is unit-norm with its sign aligned with the mean difference. ``k`` leading components
    are computed and their explained-variance ratios recorded in ``provenance["explained_variance_ratio"]``
    ([L][k]); the full basis is available from ``paired_difference_pcs``. ``normalise=False`` scales the
    unit component by the mean difference's projection on it (a magnitude comparable to diff-of-means).
    """
    a, b = _as_layers(acts_a, acts_b, paired=True)
    comps, ratio = paired_difference_pcs(a, b, k, center=center)
    vec = comps[:, 0]
    if not normalise:
        vec = vec * torch.einsum("ld,ld->l", vec, (a - b).mean(1))[:, None]
    return _finish(vec, a, b, "pca", layers, hook, normalise, provenance,
                   {"explained_variance_ratio": ratio.tolist(), "centered": center})


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression on x [n, d] float64, y [n] in {0, 1}: (w [d], bias [])."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + bias, y) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), bias.detach()


def logistic_probe(acts_a: torch.Tensor, acts_b: torch.Tensor, *, l2: float = 1e-2, steps: int = 200,
                   standardize: bool = True, layers: list[int] | None = None, hook: str = DEFAULT_HOOK,
                   normalise: bool = True, provenance: dict[str, Any] | None = None) -> Direction:
    """Logistic-regression probe (class a = 1) per layer: [L, n_a, d], [L, n_b, d] -> weights [L, d].

    Fitted with full-batch L-BFGS in float64 from zeros (deterministic) on features standardised per
    dimension (``standardize``), loss = mean BCE + l2/2 ‖w‖². The weights are mapped back to the
    original activation space (w / σ), so ``project`` works on raw activations. The bias of the raw
    (unnormalised) weights and the training accuracy are recorded in provenance.
    """
    if l2 < 0 or steps < 1:
        raise ValueError(f"need l2 >= 0 and steps >= 1, got l2={l2}, steps={steps}.")
    a, b = _as_layers(acts_a, acts_b)
    y = torch.cat([torch.ones(a.shape[1]), torch.zeros(b.shape[1])]).to(torch.float64)
    ws, biases, accs = [], [], []
    for l in range(a.shape[0]):
        x = torch.cat([a[l], b[l]])
        mu = x.mean(0) if standardize else torch.zeros(x.shape[1], dtype=torch.float64)
        sd = x.std(0, correction=0).clamp_min(1e-8) if standardize else torch.ones(x.shape[1], dtype=torch.float64)
        w_z, b_z = _fit_logistic((x - mu) / sd, y, l2, steps)
        w = w_z / sd
        bias = b_z - (w * mu).sum()
        ws.append(w)
        biases.append(float(bias))
        accs.append(float(((x @ w + bias > 0).to(torch.float64) == y).to(torch.float64).mean()))
    extra = {"l2": l2, "steps": steps, "standardize": standardize, "probe_bias": biases,
             "probe_weight_norm": [float(w.norm()) for w in ws], "train_accuracy": accs}
    return _finish(torch.stack(ws), a, b, "probe", layers, hook, normalise, provenance, extra)


DirectionMethod = Callable[..., Direction]
DIRECTION_METHODS: dict[str, DirectionMethod] = {
    "diff_of_means": diff_of_means,
    "pca": pca_of_paired_differences,
    "probe": logistic_probe,
}


def register_direction_method(name: str, fn: DirectionMethod, *, overwrite: bool = False) -> None:
    """Add ``fn(acts_a, acts_b, **kw) -> Direction`` to ``DIRECTION_METHODS`` under ``name``."""
    if name in DIRECTION_METHODS and not overwrite:
        raise ValueError(f"direction method {name!r} already registered; pass overwrite=True to replace it.")
    DIRECTION_METHODS[name] = fn


def make_direction(method: str, acts_a: torch.Tensor, acts_b: torch.Tensor, **kw: Any) -> Direction:
    """Dispatch to ``DIRECTION_METHODS[method]``: acts_a [L, n_a, d], acts_b [L, n_b, d] -> Direction."""
    if method not in DIRECTION_METHODS:
        raise ValueError(f"unknown direction method {method!r}; available: {sorted(DIRECTION_METHODS)}.")
    return DIRECTION_METHODS[method](acts_a, acts_b, **kw)
