"""Command-line entry points. Each `main()` runs under `report_errors`, which turns a
`StiltsError` (bad user input) into one line on stderr and exit status 2, no traceback."""
import functools
import os
import sys

from stilts.errors import StiltsError


def report_errors(main):
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except StiltsError as e:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "stilts"
            print(f"{prog}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return wrapper
