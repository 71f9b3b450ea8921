"""stilts-export: a stilts run's model as a transformers folder that AutoModelForSequenceClassification,
AutoModelForMultipleChoice and pipeline() load, with a model card (stilts/export.py)."""
from stilts.cli import report_errors
from stilts.flags import ArgumentParser


@report_errors
def main(argv=None):
    parser = ArgumentParser(prog="stilts-export", description="Write a stilts run's model as a transformers "
                            "folder: config.json with the task's labels, model.safetensors, the tokenizer, "
                            "README.md (a model card).")
    parser.add_argument("source", metavar="RUN_FOLDER_OR_CHECKPOINT",
                        help="a run's folder (its all_state.p, from --do_save) or a checkpoint file")
    parser.add_argument("--out", required=True, help="the folder to write: new, or empty")
    args = parser.parse_args(argv)
    from stilts.export import export  # torch and transformers: only once the flags are good

    export(args.source, args.out)
    print(f"stilts-export: {args.out}: load it with transformers' Auto classes or pipeline()")


if __name__ == "__main__":
    main()
