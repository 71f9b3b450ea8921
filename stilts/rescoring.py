"""Dev metrics of saved predictions: a run's `val_preds.csv` re-scored without the model, with the
keys and dtypes of the trainer's val_metrics.json (glue/evaluate.py)."""
import logging
import os

import numpy as np

from stilts.errors import StiltsError
from stilts.metrics import compute_metrics
from stilts.submission import read_logits

logger = logging.getLogger(__name__)


def dev_metrics(task, pred_path, data_dir):
    """`compute_metrics` of one logits file against the task's dev labels, as the trainer computes them."""
    examples = task.read("dev", data_dir)
    logits = read_logits(pred_path, task.num_labels)
    if len(logits) != len(examples):
        raise StiltsError(f"{pred_path}: {len(logits)} prediction rows, but {task.where('dev', data_dir)} "
                          f"has {len(examples)} dev examples")
    # The trainer's dtypes (float32 logits and scores), so that STS-B's correlations match it bit for bit.
    labels = task.label_ids(examples)
    preds = task.predictions(logits.astype(np.float32))
    return compute_metrics(task, preds, labels)


def evaluate_predictions(task, pred_path, data_dir, mm_data_dir=None):
    """Dev metrics of `pred_path`, keyed as in the trainer's val_metrics.json "metrics".

    A task's companions are scored too (MNLI's mismatched half) when `<prefix>_<pred file>` sits next
    to `pred_path` and the companion's dev file exists (in `mm_data_dir`, default `data_dir`, like the
    trainer's --mnli_mm_data_dir); their keys get the trainer's `<prefix>-` prefix (mm-acc).
    """
    metrics = dev_metrics(task, pred_path, data_dir)
    for prefix, companion in task.companions:
        folder = mm_data_dir or data_dir
        path = os.path.join(os.path.dirname(pred_path), f"{prefix}_{os.path.basename(pred_path)}")
        dev_file = companion.where("dev", folder)
        if os.path.isfile(path) and not os.path.isfile(dev_file):
            logger.warning("not scoring %s: no %s dev file %s", path, companion.name, dev_file)
        elif os.path.isfile(path):
            metrics.update({f"{prefix}-{k}": v for k, v in dev_metrics(companion, path, folder).items()})
    return metrics
