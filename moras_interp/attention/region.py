"""Region share geometry for attention results; the one implementation lives in
:mod:`moras_interp.models.region` (layer 1, so that :mod:`moras_interp.viz` uses it too)."""

from moras_interp.models.region import overlap_fraction, region_area_share

__all__ = ["overlap_fraction", "region_area_share"]
