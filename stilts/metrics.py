"""GLUE dev metrics with the seed's JSON keys, computed by scikit-learn and SciPy."""
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


def compute_metrics(task_name, preds, labels):
    """Metrics of one task: `preds` and `labels` are label ids (or scores for STS-B)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if task_name == "cola":
        return {"mcc": float(matthews_corrcoef(labels, preds))}
    if task_name in ("mrpc", "qqp"):
        acc = float((preds == labels).mean())
        f1 = float(f1_score(labels, preds, zero_division=0.0))
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    if task_name == "stsb":
        pearson, spearman = _correlation(pearsonr, preds, labels), _correlation(spearmanr, preds, labels)
        return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}
    return {"acc": float((preds == labels).mean())}


def _correlation(fn, preds, labels):
    """A constant prediction has no correlation; report 0 as a degenerate run, not NaN."""
    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(fn(preds, labels)[0])


def majority_baseline(task_name, train_labels, dev_labels):
    """The task metric of always predicting the most frequent training label id (label ids, as the
    trainer scores; STS-B: the mean training score, whose correlation is 0)."""
    if task_name == "stsb":
        constant = np.full(len(dev_labels), float(np.mean(train_labels)))
    else:
        values, counts = np.unique(np.asarray(train_labels), return_counts=True)
        constant = np.full(len(dev_labels), values[counts.argmax()])
    return compute_metrics(task_name, constant, dev_labels)
