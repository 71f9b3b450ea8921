"""Dev metrics with the seed's JSON keys, computed by scikit-learn and SciPy.

A task's metric picks the family of keys reported: acc; acc, f1 and acc_and_f1 (the seed's MRPC
and QQP); mcc (CoLA); pearson, spearmanr and corr (STS-B). F1 is of label 1 for two labels (the
GLUE convention: "1", the paraphrase) and the macro average over labels for more.
"""
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

FAMILIES = {"acc": "acc", "f1": "f1", "acc_and_f1": "f1", "mcc": "mcc",
            "pearson": "corr", "spearmanr": "corr", "corr": "corr"}


def compute_metrics(task, preds, labels):
    """Metrics of one task: `preds` and `labels` are label ids (or scores for regression)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    family = FAMILIES[task.metric]
    if family == "mcc":
        return {"mcc": float(matthews_corrcoef(labels, preds))}
    if family == "f1":
        acc = float((preds == labels).mean())
        average = "binary" if task.num_labels == 2 else "macro"
        f1 = float(f1_score(labels, preds, average=average, labels=range(task.num_labels), zero_division=0.0))
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    if family == "corr":
        pearson, spearman = _correlation(pearsonr, preds, labels), _correlation(spearmanr, preds, labels)
        return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}
    return {"acc": float((preds == labels).mean())}


def _correlation(fn, preds, labels):
    """A constant prediction has no correlation; report 0 as a degenerate run, not NaN."""
    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(fn(preds, labels)[0])


def majority_baseline(task, train_labels, dev_labels):
    """The task metric of always predicting the most frequent training label id (label ids, as the
    trainer scores; regression: the mean training score, whose correlation is 0)."""
    if task.is_regression:
        constant = np.full(len(dev_labels), float(np.mean(train_labels)))
    else:
        values, counts = np.unique(np.asarray(train_labels), return_counts=True)
        constant = np.full(len(dev_labels), values[counts.argmax()])
    return compute_metrics(task, constant, dev_labels)
