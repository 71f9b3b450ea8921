"""Turn `--do_test` logits into GLUE leaderboard files (the seed's glue/format_for_glue.py flags).

With `-t TASK`, `-i` is one run folder (`test_preds.csv`; for mnli also `mm_test_preds.csv`).
Without it, `-i` holds one run folder per task (`IN/<task>/test_preds.csv`, `IN/mnli/mm_test_preds.csv`),
and AX / WNLI fall back to the template when they have no predictions.
"""
import os

from stilts import submission
from stilts.cli import report_errors
from stilts.errors import StiltsError
from stilts.flags import ArgumentParser
from stilts.io import check_writable_folder


@report_errors
def main(argv=None):
    parser = ArgumentParser(description="Format test predictions for the GLUE leaderboard.")
    parser.add_argument("-t", "--task-name", default=None,
                        help="one task (its run folder is -i); default: every task, one sub-folder each under -i")
    parser.add_argument("-i", "--input-base-path", required=True)
    parser.add_argument("-o", "--output-base-path", required=True)
    parser.add_argument("-f", "--file-format", choices=["csv", "tsv"], default="csv",
                        help="extension of the logits files; comma or tab separators are both read (default: csv)")
    parser.add_argument("--no-count-check", action="store_true",
                        help="export a logits file whose row count is not the full test set's (partial test sets)")
    parser.add_argument("--template-dir", default=submission.TEMPLATE_DIR,
                        help="placeholder AX.tsv / WNLI.tsv for tasks without predictions (all-tasks mode)")
    args = parser.parse_args(argv)
    count_check = not args.no_count_check
    check_writable_folder(args.output_base_path, "-o/--output-base-path")

    if args.task_name is not None:
        for entry, stem in submission.files_for_run(args.task_name):
            pred_path = os.path.join(args.input_base_path, f"{stem}.{args.file_format}")
            out_path = submission.export_file(entry, pred_path, args.output_base_path, count_check)
            print(f"wrote {out_path}")
        return

    outcomes = submission.export_all(args.input_base_path, args.output_base_path, args.file_format,
                                     args.template_dir, count_check)
    for outcome in outcomes:
        print(outcome)
    failed = [o.entry.filename for o in outcomes if o.failed]
    if failed:
        raise StiltsError(f"could not export {', '.join(failed)} (see above)")


if __name__ == "__main__":
    main()
