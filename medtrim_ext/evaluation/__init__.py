"""Evaluation of trained encoders: retrieval, linear probe, result tables and figures, and of a
trained run as a whole (:mod:`.run`: ``evaluate_run``, ``embed_dataset``, ...).

    >>> from medtrim_ext.evaluation import keys_for, evaluate_retrieval, linear_probe
    >>> keys = keys_for(entities=test_entities)            # {"disease": ..., "fine": ...}
    >>> res = evaluate_retrieval(img_emb, txt_emb, keys)   # {"i2t": {"disease": {...}, ...}, "t2i": ...}
    >>> res["probe"] = linear_probe(train_x, train_y, test_x, test_y, class_names)

The plotting functions (matplotlib) and :mod:`.run` (which needs the training stage: datasets,
encoders) load on first use.
"""

from __future__ import annotations

from ..utils.extras import require_extra

# a clear ImportError naming the extra, before any import of it fails bare
require_extra("train", "medtrim_ext.evaluation")

from .attributes import attribute_agreement, evaluate_attributes, hub_diagnostic
from .keys import attribute_disease_keys, attribute_keys, disease_set_keys, entity_keys, keys_for
from .probe import linear_probe, roc_auc
from .report import flatten_metrics, key_metrics, results_markdown, summarize_runs, write_results
from .retrieval import evaluate_retrieval, retrieval_metrics, text_groups

_PLOTS = {"plot_attributes", "plot_probe_auc", "plot_results", "plot_retrieval",
          "plot_step_breakdown", "plot_training_curves", "step_breakdown_bars"}
_RUN = {"class_labels", "embed_dataset", "evaluate_model", "evaluate_run", "load_trained", "relevance_keys"}

__all__ = ["attribute_agreement", "attribute_disease_keys", "attribute_keys", "disease_set_keys",
           "entity_keys", "evaluate_attributes", "evaluate_retrieval", "flatten_metrics",
           "hub_diagnostic", "key_metrics", "keys_for", "linear_probe", "results_markdown", "text_groups",
           "retrieval_metrics", "roc_auc", "summarize_runs", "write_results", *sorted(_PLOTS), *sorted(_RUN)]


def __getattr__(name):
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'medtrim_ext.evaluation' has no attribute {name!r}")
