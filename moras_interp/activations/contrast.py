"""From a collected store to two classes per layer, their separability and a direction.

    pair = class_activations(store, "unsafe", "safe")                # acts_a [L, n_a, d], acts_b [L, n_b, d]
    sep = layer_separability(pair)                                   # FDR [L] and held-out AUROC [L]
    separability_figure_by_condition({"plain": sep, "reformulated": sep2}).show()
    direction = pair.direction("diff_of_means")                      # Direction with provenance
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from moras_interp.activations.directions import DEFAULT_HOOK, Direction, make_direction
from moras_interp.activations.separability import fdr_per_layer, separability_panel, split_auroc_per_layer
from moras_interp.activations.store import ActivationStore
from moras_interp.eval.labels import DatasetFormatError, parse_label

if TYPE_CHECKING:
    import plotly.graph_objects as go


def store_layers(store: ActivationStore, template: str = DEFAULT_HOOK) -> list[int]:
    """The layers l for which ``template.format(l=l)`` was collected, ascending."""
    if "{l}" not in template:
        raise ValueError(f"template must contain '{{l}}', got {template!r}.")
    pat = re.compile("^" + re.escape(template).replace(r"\{l\}", r"(\d+)") + "$")
    layers = sorted(int(m.group(1)) for h in store.hooks if (m := pat.match(h)))
    if not layers:
        raise KeyError(f"no hook in this store matches {template!r}; it holds {store.hooks}.")
    return layers


def load_layers(store: ActivationStore, template: str = DEFAULT_HOOK,
                layers: Sequence[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Stack ``template`` over layers: (float32 [L, n, ...], layers)."""
    have = store_layers(store, template)
    chosen = have if layers is None else [int(l) for l in layers]
    missing = [l for l in chosen if l not in have]
    if missing:
        raise KeyError(f"layers {missing} of {template!r} were not collected (available: {have}).")
    return torch.stack([store.load(template.format(l=l)).float() for l in chosen]), chosen


def _canonical(label: Any) -> Any:
    """A requested class in the stored spelling ("Harmful", 1, True -> "unsafe"; see eval.labels); other values
    are kept, so the error below lists the labels present."""
    try:
        return parse_label(label, where="class_activations")
    except DatasetFormatError:
        return label


def _label_ids(store: ActivationStore, want: str | Sequence[str], counts: dict[str, int]) -> list[int]:
    names = list(store.manifest.get("label_names") or [])
    want = [_canonical(w) for w in ([want] if isinstance(want, (str, bool, int)) else list(want))]
    unknown = [w for w in want if w not in names]
    if unknown:
        raise ValueError(f"label(s) {unknown} do not occur in this store; labels present: {counts or 'none'}. "
                         "Check the 'label' field of your dataset.")
    return [names.index(w) for w in want]


@dataclass
class ClassActivations:
    """Two classes of collected activations per layer.

    acts_a: float32 [L, n_a, d]; acts_b: float32 [L, n_b, d]; index_a / index_b: dataset indices [n_a] / [n_b];
    layers: the L layers; hook: the name template; provenance: model id, dataset fingerprint, positions, labels.
    """

    acts_a: torch.Tensor
    acts_b: torch.Tensor
    index_a: torch.Tensor
    index_b: torch.Tensor
    layers: list[int]
    hook: str
    provenance: dict[str, Any]

    def direction(self, method: str = "diff_of_means", **kw: Any) -> Direction:
        """A :class:`Direction` pointing from class b to class a (see ``DIRECTION_METHODS``)."""
        return make_direction(method, self.acts_a, self.acts_b, layers=self.layers, hook=self.hook,
                              provenance={**self.provenance, **kw.pop("provenance", {})}, **kw)


def class_activations(store: ActivationStore, a: str | Sequence[str], b: str | Sequence[str], *,
                      template: str = DEFAULT_HOOK, layers: Sequence[int] | None = None) -> ClassActivations:
    """Split a store by label: examples labelled ``a`` (one label or several) vs ``b``.

    Labels are stored as ``"unsafe"`` / ``"safe"`` (the one label rule, :mod:`moras_interp.eval.labels`); any
    accepted spelling of them may be asked for here (``"harmful"``, ``1``, ``True``…).

    Raises a ValueError naming the labels present when a class is empty or a label is unknown.
    """
    labels = store.load("labels")
    names = list(store.manifest.get("label_names") or [])
    counts = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    if int((labels < 0).sum()):
        counts["<unlabeled>"] = int((labels < 0).sum())
    ids_a, ids_b = _label_ids(store, a, counts), _label_ids(store, b, counts)
    if set(ids_a) & set(ids_b):
        raise ValueError(f"classes a={a!r} and b={b!r} share labels; they must be disjoint.")
    mask_a, mask_b = torch.isin(labels, torch.tensor(ids_a)), torch.isin(labels, torch.tensor(ids_b))
    for name, want, mask in (("a", a, mask_a), ("b", b, mask_b)):
        if not bool(mask.any()):
            raise ValueError(f"class {name} ({want!r}) has 0 examples in this store; labels present: {counts}.")
    acts, chosen = load_layers(store, template, layers)
    index = store.load("index")
    m = store.manifest
    prov = {"model_id": m["model_id"], "dataset_fingerprint": m["dataset_fingerprint"], "positions": m["positions"],
            "class_a": a, "class_b": b}
    return ClassActivations(acts[:, mask_a], acts[:, mask_b], index[mask_a], index[mask_b], chosen, template, prov)


@dataclass
class LayerSeparability:
    """Per-layer separability of two classes: fdr float64 [L], auroc float64 [L] (held-out), layers, n_a, n_b."""

    layers: list[int]
    fdr: torch.Tensor
    auroc: torch.Tensor
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "fdr": self.fdr.tolist(), "auroc": self.auroc.tolist(),
                "n_a": self.n_a, "n_b": self.n_b}


def layer_separability(pair: ClassActivations, *, eps: float = 1e-3, test_fraction: float = 0.3,
                       seed: int = 0) -> LayerSeparability:
    """FDR (paper formula, float64, stable for d > n) and held-out mean-difference AUROC per layer."""
    fdr = fdr_per_layer(pair.acts_a, pair.acts_b, eps)
    auc = split_auroc_per_layer(pair.acts_a, pair.acts_b, test_fraction=test_fraction, seed=seed)
    return LayerSeparability(list(pair.layers), fdr, auc, int(pair.acts_a.shape[1]), int(pair.acts_b.shape[1]))


def separability_figure_by_condition(results: dict[str, LayerSeparability], title: str | None = None, *,
                                     log_fdr: bool = True) -> go.Figure:
    """Plotly figure, FDR and AUROC across layers, one line per condition (e.g. plain vs reformulated)."""
    if not results:
        raise ValueError("pass at least one condition, e.g. {'plain': layer_separability(pair)}.")
    layers = {tuple(r.layers) for r in results.values()}
    if len(layers) != 1:
        raise ValueError(f"all conditions need the same layers, got {sorted(layers)}.")
    return separability_panel({k: r.fdr for k, r in results.items()}, {k: r.auroc for k, r in results.items()},
                              title, layers=list(next(iter(layers))), log_fdr=log_fdr,
                              n=", ".join(sorted({f"{r.n_a} vs {r.n_b}" for r in results.values()})) + " examples")
