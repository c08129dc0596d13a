"""Ablation studies: a resumable grid runner over named factors and standard evaluators.

    from moras_interp.ablations import run_grid, moras_evaluator, metric_vs_factor
    df = run_grid({"fixed_r": [None, 0.5, 1.0], "gamma": [0.0, 0.3]},
                  moras_evaluator(model, prototype, calibration), dataset, out="runs/ablate")
    metric_vs_factor(df, "fixed_r", "refused", color="label")
"""

from moras_interp.ablations.evaluators import attention_evaluator, fdr_rows, moras_evaluator
from moras_interp.ablations.runner import (
           metric_vs_factor,
           run_grid,
           setting_key,
           settings_of,
           two_factor_heatmap,
)

__all__ = ["attention_evaluator", "fdr_rows", "metric_vs_factor", "moras_evaluator", "run_grid", "setting_key",
           "settings_of", "two_factor_heatmap"]
