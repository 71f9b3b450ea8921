"""Dev metrics of a saved predictions file (the seed's glue/evaluate.py flags).

`--pred-file-path` is a run's `val_preds.csv` (comma- or tab-separated logits). For mnli, a
`mm_val_preds.csv` next to it is scored too, with `mm-` keys, so the output equals the
"metrics" of the trainer's val_metrics.json. `--task-name mnli-mm` scores the mismatched half alone.
"""
import json

from stilts.cli import report_errors
from stilts.flags import ArgumentParser
from stilts.io import check_writable_file, write_json
from stilts.tasks import get_task, resolve_data_dir


@report_errors
def main(argv=None):
    parser = ArgumentParser(description="Compute GLUE dev metrics from a predictions file.")
    parser.add_argument("--task-name", required=True, help="a GLUE task, or a task file (*.json)")
    parser.add_argument("--pred-file-path", required=True, help="logits, one row per dev example (val_preds.csv)")
    parser.add_argument("--task-data-dir", default=None,
                        help="the task's folder (default: $GLUE_DIR/<folder>; a task file's own folder)")
    parser.add_argument("--mnli-mm-data-dir", default=None,
                        help="mnli: the folder holding dev_mismatched.tsv (default: --task-data-dir)")
    parser.add_argument("--output-path", default=None, help="write the metrics here as JSON")
    parser.add_argument("--no-print", action="store_true")
    args = parser.parse_args(argv)

    task = get_task(args.task_name, data_dir=args.task_data_dir)
    if args.output_path is not None:
        check_writable_file(args.output_path, "--output-path")
    data_dir = resolve_data_dir(task, args.task_data_dir, flag="--task-data-dir")
    from stilts import rescoring  # scikit-learn and SciPy: only once the flags are good

    metrics = rescoring.evaluate_predictions(task, args.pred_file_path, data_dir, args.mnli_mm_data_dir)
    if not args.no_print:
        print(json.dumps(metrics, indent=2))
    if args.output_path is not None:
        write_json(args.output_path, metrics)


if __name__ == "__main__":
    main()
