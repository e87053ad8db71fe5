"""Analyses of finished runs: the thesis's per-class error, feature-norm and t-SNE figures.

Usable from Python (:mod:`longtail.analysis.figures`) and from the shell::

    python -m longtail.analysis RUN_DIR [RUN_DIR ...] --out docs/ [--labels CE FBL] \\
        [--figures per_class feature_norm tsne] [--name PREFIX] [--note "synthetic data, 8 epochs"]

``longtail reproduce`` draws the figures of its tables with the same functions.
"""
from .figures import (  # noqa: F401
    class_counts_of,
    feature_norm_curves,
    frequency_groups,
    per_class_errors,
    plot_feature_norms,
    plot_per_class_error,
    plot_tsne,
    rank_groups,
    run_features,
    shot_names,
    tsne_2d,
)

__all__ = [
    "class_counts_of",
    "feature_norm_curves",
    "frequency_groups",
    "per_class_errors",
    "plot_feature_norms",
    "plot_per_class_error",
    "plot_tsne",
    "rank_groups",
    "run_features",
    "shot_names",
    "tsne_2d",
]
