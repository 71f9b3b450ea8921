"""Command-line entry points. Each `main()` runs under `report_errors`, which turns a
`StiltsError` (bad user input) into one line on stderr and exit status 2, no traceback."""
import argparse
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


class OneLineErrors:
    """argparse's errors in one line, like every other bad input (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class DefaultsOnce(argparse.HelpFormatter):
    """Each flag's default in --help once: argparse's "(default: X)", unless the help already says what
    the default is, or there is none to say (no value, a switch that is off, a required flag)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if "default" in help or action.required or action.default in (None, False, "", argparse.SUPPRESS):
            return help
        return help + " (default: %(default)s)"


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """The commands' parser: one-line errors, and every flag's default in --help, once."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=DefaultsOnce, **kwargs)
