"""Contrastive activations: collection to a resumable store, directions, per-layer separability, steering.

    store = collect_activations(model, examples, names="blocks.*.hook_resid_post", out="runs/x")
    pair = class_activations(store, "unsafe", "safe")                 # [L, n_a, d], [L, n_b, d]
    sep = layer_separability(pair)                                    # FDR [L], held-out AUROC [L]
    direction = pair.direction("diff_of_means")
    with steer(model, direction, alpha=4.0, positions="last", layouts=batch.layouts):
        model.generate(batch)
"""

from moras_interp.activations.collect import (
    POSITION_MODES,
    collect_activations,
    model_fingerprint,
    reduce_positions,
)
from moras_interp.activations.contrast import (
    ClassActivations,
    LayerSeparability,
    class_activations,
    layer_separability,
    load_layers,
    separability_figure_by_condition,
    store_layers,
)
from moras_interp.activations.directions import (
    DIRECTION_METHODS,
    Direction,
    diff_of_means,
    logistic_probe,
    make_direction,
    paired_difference_pcs,
    pca_of_paired_differences,
    register_direction_method,
)
from moras_interp.activations.examples import CollectExample, examples_fingerprint, normalise_dataset
from moras_interp.activations.separability import (
    auroc,
    fdr_per_layer,
    fisher_discriminant_ratio,
    projection_auroc,
    separability_figure,
    separability_panel,
    split_auroc_per_layer,
)
from moras_interp.activations.steering import (
    add_steering,
    direction_hooks,
    position_mask,
    steer,
    steering_hooks,
)
from moras_interp.activations.store import ActivationStore, StoreWarning, dataset_fingerprint

__all__ = [
    "DIRECTION_METHODS",
    "POSITION_MODES",
    "ActivationStore",
    "ClassActivations",
    "CollectExample",
    "Direction",
    "LayerSeparability",
    "StoreWarning",
    "add_steering",
    "auroc",
    "class_activations",
    "collect_activations",
    "dataset_fingerprint",
    "diff_of_means",
    "direction_hooks",
    "examples_fingerprint",
    "fdr_per_layer",
    "fisher_discriminant_ratio",
    "layer_separability",
    "load_layers",
    "logistic_probe",
    "make_direction",
    "model_fingerprint",
    "normalise_dataset",
    "paired_difference_pcs",
    "pca_of_paired_differences",
    "position_mask",
    "projection_auroc",
    "reduce_positions",
    "register_direction_method",
    "separability_figure",
    "separability_figure_by_condition",
    "separability_panel",
    "split_auroc_per_layer",
    "steer",
    "steering_hooks",
    "store_layers",
]
