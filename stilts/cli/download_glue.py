"""Download the GLUE tasks into the official folders, checked and safe to rerun.

    stilts-download-glue --data_dir glue_data                 # every task
    stilts-download-glue --data_dir glue_data --tasks rte,mrpc

The work is in stilts/glue_download.py; see docs/download.md.
"""
import signal

from stilts import glue_download
from stilts.cli import report_errors
from stilts.flags import ArgumentParser
from stilts.io import check_writable_folder


@report_errors
def main(argv=None):
    parser = ArgumentParser(description="Download GLUE into the official folders (CoLA/, SST-2/, ..., "
                                        "diagnostic/), checking every file's row count. Complete tasks "
                                        "are skipped.")
    parser.add_argument("--data_dir", required=True, help="the GLUE folder (GLUE_DIR); created if missing")
    parser.add_argument("--tasks", default=",".join(glue_download.TASK_NAMES),
                        help="comma-separated task names")
    parser.add_argument("--base_url", default=glue_download.OFFICIAL_BASE_URL,
                        help="where glue/data/... and senteval/senteval_data/... are served (a mirror)")
    args = parser.parse_args(argv)

    names = glue_download.parse_tasks(args.tasks)
    check_writable_folder(args.data_dir, "--data_dir")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        glue_download.download_glue(args.data_dir, names, args.base_url,
                                    report=lambda line: print(line, flush=True))
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt(signum, frame):
    """SIGTERM (kill, a scheduler's time limit) as Ctrl-C: the hidden download folder is removed, and
    the command ends with one line."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
