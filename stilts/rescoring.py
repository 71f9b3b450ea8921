"""Dev metrics of saved predictions: a run's `val_preds.csv` re-scored without the model, with the
keys and dtypes of the trainer's val_metrics.json (glue/evaluate.py)."""
import logging
import os

import numpy as np

from stilts.errors import StiltsError
from stilts.metrics import compute_metrics
from stilts.submission import read_logits
from stilts.tasks import get_task

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

    For mnli, the mismatched half is scored too when `mm_<pred file>` sits next to `pred_path`
    and the mismatched dev file exists (in `mm_data_dir`, default `data_dir`, like the trainer's
    --mnli_mm_data_dir); its keys get the trainer's `mm-` prefix.
    """
    metrics = dev_metrics(task, pred_path, data_dir)
    if task.name == "mnli":
        mm_task, mm_data_dir = get_task("mnli-mm"), mm_data_dir or data_dir
        mm_path = os.path.join(os.path.dirname(pred_path), "mm_" + os.path.basename(pred_path))
        mm_dev = mm_task.path("dev", mm_data_dir)
        if os.path.isfile(mm_path) and not os.path.isfile(mm_dev):
            logger.warning("not scoring %s: no mismatched dev file %s", mm_path, mm_dev)
        elif os.path.isfile(mm_path):
            metrics.update({"mm-" + k: v for k, v in dev_metrics(mm_task, mm_path, mm_data_dir).items()})
    return metrics
