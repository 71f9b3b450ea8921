"""Training curves for TensorBoard (`--report_to tensorboard`).

Scalars go to `<output_dir>/tensorboard/`: `train/loss`, `train/learning_rate`, `train/grad_norm`
and `train/examples_per_s` at every host check of the training loop (--logging_steps), and
`eval/<metric>` and `eval/loss` after every dev evaluation, all against the optimizer step.
A stilts-run study folder is then one TensorBoard log root: `tensorboard --logdir STUDY` shows every
run of the study side by side. The writer is torch's SummaryWriter; the `tensorboard` package is
an optional extra.
"""
import importlib.util
import os

from stilts.errors import StiltsError

def check_available(report_to):
    """One line, before any work, when the package for --report_to is missing."""
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise StiltsError("--report_to tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'stilts[tensorboard]')")


class TensorBoard:
    def __init__(self, output_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def scalars(self, prefix, values, step):
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


def open_reporter(report_to, output_dir):
    """The reporter --report_to asks for, or None."""
    return TensorBoard(output_dir) if report_to == "tensorboard" else None
