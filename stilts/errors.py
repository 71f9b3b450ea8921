"""The exception type for bad user input.

Anything a user can fix (a missing file, a malformed row, a checkpoint that does not fit) raises
`StiltsError` with a one-line message; the command-line entry points print it and exit with
status 2 instead of showing a traceback. The library's errors that a flag can fix carry their
data (the subclasses below), and stilts/cli words the advice in terms of its flags.
"""


class StiltsError(Exception):
    """A problem with the user's input, reported as one line on stderr (exit status 2)."""


class NonFiniteTraining(StiltsError):
    """A non-finite training loss or gradient norm stopped training, no update from it applied."""

    def __init__(self, what, value, where, stopped_at, weights_path):
        self.what, self.value, self.where, self.stopped_at, self.weights_path = what, value, where, stopped_at, weights_path
        super().__init__(f"{what} is {value} at {where}; stopped at step {stopped_at}, with no update from a "
                         f"non-finite step. The weights are in {weights_path}")


class CannotResume(StiltsError):
    """A checkpoint that cannot resume this training: it lacks the training state (`missing`), a
    setting that fixes the batches differs (`setting`, with its value then and now), or `problem`."""

    def __init__(self, problem=None, missing=(), setting=None, then=None, now=None):
        self.problem, self.missing, self.setting, self.then, self.now = problem, tuple(missing), setting, then, now
        super().__init__(self.describe())

    def describe(self, name=str):
        """The problem, with `name` turning a setting's name into what the user calls it (a flag)."""
        if self.missing:
            return f"the checkpoint has no {', '.join(self.missing)}: it holds no training state"
        if self.setting is not None:
            return (f"the checkpoint's run used {name(self.setting)} {self.then}, this one {self.now}; resuming "
                    f"needs the same value")
        return self.problem
