"""The command lines' argparse pieces: one-line errors, each default shown once, and flags built
from a settings dataclass."""
import argparse
import dataclasses
import typing


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


def add_flags(group, settings_class):
    """A flag per field of a settings dataclass (declared with stilts.settings.setting): its name, type,
    default, help and choices, so that the dataclass is the one declaration."""
    for field in dataclasses.fields(settings_class):
        kind = field.type
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        options = {key: value for key, value in field.metadata.items() if key != "help"}
        group.add_argument(f"--{field.name}", type=kind, default=field.default, help=field.metadata["help"],
                           **options)
