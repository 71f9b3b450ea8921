"""`glue/train.py`: fine-tune, evaluate and predict one GLUE task, with the seed's flags and outputs.

Flow: parse and check every input up front (stilts.run_settings: flags, data files, output
folder, model config) so a run never dies hours in on a typo, take the output folder, then hand
over to stilts.finetune. Heavy imports wait until the flags are parsed, so `--help` and flag
errors answer at once.
"""
import contextlib
import logging
import os
import time

from stilts import run_folder
from stilts.cli import report_errors
from stilts.errors import CannotResume, NonFiniteTraining, StiltsError
from stilts.run_settings import check_args, parse_args, splits_of


@report_errors
def main(argv=None):
    started = time.monotonic()
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.WARNING if args.not_verbose else logging.INFO)
    if args.local_rank >= 0 and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    task, data_dir = check_args(args)
    from stilts import distributed, finetune  # torch and transformers: only once the flags are good

    # One writer per folder: a second run on it is refused while this one lives (rank 0 holds it).
    in_use = (run_folder.locked(args.output_dir, must_be_empty=not args.force_overwrite)
              if distributed.is_main_process() else contextlib.nullcontext())
    with in_use:
        ctx = distributed.init_distributed(no_cuda=args.no_cuda, local_rank=args.local_rank)
        try:
            finetune.run(args, ctx, task, splits_of(args, task, data_dir), started)
        except NonFiniteTraining as e:
            raise StiltsError(f"{e}. Try a lower --learning_rate, or fp32 instead of --fp16/--bf16") from None
        except CannotResume as e:
            advice = (" (saved with --bert_save_mode model_all or model_tunable?); resuming needs one written with "
                      "--bert_save_mode all or tunable") if e.missing else ""
            raise StiltsError(f"--bert_load_mode state_all: {e.describe(lambda name: '--' + name)}{advice}") from None
        finally:
            distributed.shutdown(ctx)


if __name__ == "__main__":
    main()
