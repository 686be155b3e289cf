"""Evaluators: zero-shot, retrieval, linear probe, kNN, fine-tuning, grounding; metrics, statistics, results.

Every evaluator works the same way for any encoder (medvl checkpoint or ``timm:<name>``):
frozen features are extracted once per split (:mod:`~medvl.evaluate.features`, cached), a task
module turns them into per-sample predictions, and :func:`~medvl.evaluate.results.make_result`
scores them with patient-level bootstrap CIs into JSON records that keep the predictions, so
:mod:`~medvl.evaluate.compare` can run paired tests between any two stored results later.

Public API::

    compute_metrics(scores, labels, task, metrics=METRICS, class_names=None) -> {name: MetricResult}
    bootstrap_ci(scores, labels, task, groups=None, n_boot=1000, seed=0) -> {name: ConfidenceInterval}
    paired_bootstrap(...), delong_test(y, s_a, s_b), mcnemar_test(correct_a, correct_b)
    Predictions, MetricRecord, EvalResult, make_result, save_results, load_results
    compare_files(a, b), compare_predictions(a, b)
    extract_features(encoder, manifest, split, cache_dir=None) -> Features
    zeroshot_features, retrieval_features, linear_probe_features, knn_features, finetune
    grounding_eval(model, manifest, split) -> EvalResult   (attention maps vs finding masks)
    TorchLogisticRegression, knn_scores
"""

from medvl.evaluate.compare import compare_files, compare_predictions
from medvl.evaluate.features import Features, extract_features
from medvl.evaluate.finetune import finetune, protocol_config
from medvl.evaluate.grounding import grounding_eval
from medvl.evaluate.knn import knn_features, knn_scores
from medvl.evaluate.linear_probe import TorchLogisticRegression, linear_probe_features
from medvl.evaluate.metrics import METRICS, AbsentClassWarning, MetricResult, compute_metrics
from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, load_results, make_result, save_results
from medvl.evaluate.retrieval import retrieval_features
from medvl.evaluate.stats import (
    ConfidenceInterval,
    PairedTest,
    bootstrap_ci,
    delong_test,
    mcnemar_test,
    paired_bootstrap,
)
from medvl.evaluate.zeroshot import zeroshot_features

__all__ = [
    "METRICS",
    "AbsentClassWarning",
    "ConfidenceInterval",
    "EvalResult",
    "Features",
    "MetricRecord",
    "MetricResult",
    "PairedTest",
    "Predictions",
    "TorchLogisticRegression",
    "bootstrap_ci",
    "compare_files",
    "compare_predictions",
    "compute_metrics",
    "delong_test",
    "extract_features",
    "finetune",
    "grounding_eval",
    "knn_features",
    "knn_scores",
    "linear_probe_features",
    "load_results",
    "make_result",
    "mcnemar_test",
    "paired_bootstrap",
    "protocol_config",
    "retrieval_features",
    "save_results",
    "zeroshot_features",
]
