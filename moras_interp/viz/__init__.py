"""Figures and exports: token scores painted over the original image, layer x head grids,
small multiples, difference maps; HTML / PNG (browser-free) / NPZ exports.

``viz`` reads result objects and arrays; it never runs models.
"""

from moras_interp.viz.export import (
    browser_path,
    kaleido_available,
    load_npz,
    save_html,
    save_npz,
    save_png,
    sidecar_path,
)
from moras_interp.viz.figures import (
    difference_map,
    heatmap_over_image,
    layer_head_grid,
    small_multiples,
)
from moras_interp.viz.mpl import figure_to_matplotlib
from moras_interp.viz.raster import paint_boxes, region_mask, token_map, token_region_overlap
from moras_interp.viz.style import describe

__all__ = [
    "browser_path",
    "describe",
    "difference_map",
    "figure_to_matplotlib",
    "heatmap_over_image",
    "kaleido_available",
    "layer_head_grid",
    "load_npz",
    "paint_boxes",
    "region_mask",
    "save_html",
    "save_npz",
    "save_png",
    "sidecar_path",
    "small_multiples",
    "token_map",
    "token_region_overlap",
]
