"""Build a GLUE leaderboard zip from `--do_test` runs: export, validate, zip.

    python -m stilts.cli.make_submission IN OUT      # IN/<task>/test_preds.csv, ... -> OUT/submission.zip
    python -m stilts.cli.make_submission --validate OUT

The zip is written only when every found task exported and all eleven files pass validation;
otherwise the report says what is wrong and the exit status is 2.
"""
import os

from stilts import submission
from stilts.cli import report_errors
from stilts.errors import StiltsError
from stilts.flags import ArgumentParser
from stilts.io import check_writable_folder


@report_errors
def main(argv=None):
    parser = ArgumentParser(description="Export, validate and zip a GLUE leaderboard submission.")
    parser.add_argument("input_base_path", nargs="?", help="one run folder per task: IN/<task>/test_preds.csv")
    parser.add_argument("output_base_path", help="where the eleven .tsv files and submission.zip go")
    parser.add_argument("--validate", action="store_true",
                        help="only validate the files already in OUT (no export, no zip)")
    parser.add_argument("-f", "--file-format", choices=["csv", "tsv"], default="csv")
    parser.add_argument("--template-dir", default=submission.TEMPLATE_DIR)
    args = parser.parse_args(argv)
    out = args.output_base_path

    if args.validate:
        if args.input_base_path is not None:
            parser.error("--validate takes only the folder to check")
        report = submission.validate_submission(out)
        print(report)
        if not report.ok:
            raise StiltsError(f"{out}: not a valid submission ({report.num_problems} problem(s) above)")
        return
    if args.input_base_path is None:
        parser.error("the following arguments are required: input_base_path output_base_path")
    if not os.path.isdir(args.input_base_path):  # else OUT's earlier files would be zipped again
        raise StiltsError(f"{args.input_base_path}: input folder not found (IN holds one run folder per task)")
    check_writable_folder(out, "OUT")

    outcomes, report, zip_path = submission.make_submission(args.input_base_path, out, args.file_format,
                                                            args.template_dir)
    for outcome in outcomes:
        print(outcome)
    print(report)
    if zip_path is None:
        failed = sum(o.failed for o in outcomes)
        stale = os.path.join(out, "submission.zip")
        note = f"; the existing {stale} is from an earlier run" if os.path.exists(stale) else ""
        raise StiltsError(f"no zip written: {failed} export failure(s), {report.num_problems} validation "
                          f"problem(s) (see above){note}")
    print(f"wrote {zip_path}")


if __name__ == "__main__":
    main()
