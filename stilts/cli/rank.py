"""`stilts-rank`: rank candidate intermediate tasks for a target, in minutes (stilts/ranking.py).

    stilts-rank --target rte --candidates mnli,qnli,qqp,sst,cola --bert_model MODEL --glue_dir GLUE
    stilts-rank --target rte --candidates mnli,qnli,qqp,sst --study runs/grid --json ranking.json

With --study (a stilts-run folder), LogME reads the stage A checkpoints there, and every method is
judged against the gains the study measured: NDCG@3, Regret@1, Regret@3 and Spearman, next to what
a random ranking scores on average.
"""
import json
import os
import time

from stilts.cli import ArgumentParser, report_errors
from stilts.errors import StiltsError
from stilts.io import check_writable_file, write_json
from stilts.tasks import get_task, resolve_data_dir


def build_parser():
    p = ArgumentParser(prog="stilts-rank", allow_abbrev=False,
                       description="Rank candidate intermediate tasks for a target task without fine-tuning on "
                                   "every pair (SEmb, TextEmb, LogME); with --study, judge each ranking against "
                                   "the measured transfer.")
    p.add_argument("--target", required=True, help="the target task: a GLUE name or a task file")
    p.add_argument("--candidates", required=True, help="comma-separated candidate intermediate tasks")
    p.add_argument("--method", default=None,
                   help="comma-separated methods among semb, textemb, logme (default: semb,textemb, and logme "
                        "when stage A checkpoints are given)")
    p.add_argument("--study", default=None,
                   help="a stilts-run folder: stage A checkpoints for LogME (intermediate_<task>/all_state.p), "
                        "its --bert_model, and the measured gains to evaluate the rankings against")
    p.add_argument("--checkpoints", default=None,
                   help="stage A checkpoints for LogME without a study: mnli=PATH,qnli=PATH,...")
    p.add_argument("--bert_model", default=None,
                   help="the study's encoder, for TextEmb and LogME (default: the one the --study used)")
    p.add_argument("--embedding_model", default=None,
                   help="the sentence encoder of SEmb (default: all-MiniLM-L6-v2 from `make model`, else its hub id)")
    p.add_argument("--do_lower_case", action="store_true", help="lower-case the texts (uncased models)")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"), help="the GLUE data folder (default $GLUE_DIR)")
    p.add_argument("--max_examples", type=int, default=1000, help="training examples read per dataset (seeded sample)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="the seed of the samples")
    p.add_argument("--json", default=None, help="write the rankings (and the evaluation) here")
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.max_examples < 2 or args.max_seq_length < 5:
        raise StiltsError("--max_examples must be at least 2 and --max_seq_length at least 5")
    args.target = get_task(args.target)
    args.candidates = [get_task(name.strip()) for name in args.candidates.split(",") if name.strip()]
    if len(args.candidates) < 2:
        raise StiltsError("--candidates: give at least two tasks to rank, e.g. mnli,qnli")
    from stilts.ranking import METHODS

    has_checkpoints = bool(args.study or args.checkpoints)
    methods = args.method.split(",") if args.method else ["semb", "textemb"] + (["logme"] if has_checkpoints else [])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise StiltsError(f"--method {unknown[0]!r}: not one of {', '.join(METHODS)}")
    args.methods = list(dict.fromkeys(methods))
    args.summary = read_study(args) if args.study else None
    args.checkpoints = stage_a_checkpoints(args) if "logme" in args.methods else {}
    if args.bert_model is None and {"textemb", "logme"} & set(args.methods):
        raise StiltsError("--bert_model: TextEmb and LogME need the study's encoder (or pass --study)")
    args.folders = {}  # every task's train split, found before any model loads
    for task in [args.target] + args.candidates:
        args.folders[task.name] = resolve_data_dir(task, glue_dir=args.glue_dir, flag="--glue_dir")
        task.check_split("train", args.folders[task.name])
    if args.json:
        check_writable_file(args.json, "--json")
    return args


def read_study(args):
    """The study's summary.json; its encoder becomes the default --bert_model."""
    path = os.path.join(args.study, "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except OSError as e:
        raise StiltsError(f"{path}: cannot read the study's summary ({e.strerror}); has stilts-run finished?") from None
    except ValueError as e:
        raise StiltsError(f"{path}: not a study summary ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("targets"), dict):
        raise StiltsError(f"{path}: not a stilts-run summary (no 'targets')")
    if args.bert_model is None:  # the encoder and casing of the study's first stage A
        from stilts.study_summary import summary_intermediates  # SciPy: after the flags

        intermediate = (summary_intermediates(summary) or [None])[0]
        try:
            with open(os.path.join(args.study, f"intermediate_{intermediate}", "args.json"), encoding="utf-8") as f:
                recorded = json.load(f)
            args.bert_model, args.do_lower_case = recorded["bert_model"], args.do_lower_case or recorded["do_lower_case"]
        except (OSError, ValueError, KeyError):
            pass  # then --bert_model is asked for below
    return summary


def stage_a_checkpoints(args):
    """{candidate: stage A all_state.p}, from --checkpoints or the study folder."""
    if args.checkpoints:
        pairs = [item.split("=", 1) for item in args.checkpoints.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise StiltsError(f"--checkpoints {args.checkpoints!r}: expected TASK=PATH,TASK=PATH")
        paths = {get_task(name.strip()).name: path for name, path in pairs}
    elif args.study:
        paths = {task.name: os.path.join(args.study, f"intermediate_{task.name}", "all_state.p")
                 for task in args.candidates}
    else:
        raise StiltsError("--method logme needs stage A checkpoints: --study DIR or --checkpoints TASK=PATH,...")
    for task in args.candidates:
        if task.name not in paths:
            raise StiltsError(f"--checkpoints: no checkpoint for candidate {task.name}")
        if not os.path.isfile(paths[task.name]):
            raise StiltsError(f"{paths[task.name]}: stage A checkpoint of {task.name} not found (LogME)")
    return paths


@report_errors
def main(argv=None):
    args = parse_args(argv)
    from stilts import ranking  # torch and transformers: only once the flags are good

    def read(task, tokenizer):
        return ranking.sample(task, args.folders[task.name], tokenizer, args.max_seq_length, args.max_examples,
                              args.seed)

    result = {"target": args.target.name, "methods": {}}
    for method in args.methods:
        started = time.monotonic()
        if method == "logme":
            scores = ranking.logme_scores(args.target, args.candidates, args.checkpoints, args.bert_model,
                                          args.do_lower_case, read)
        elif method == "semb":
            model = args.embedding_model or ranking.default_embedding_model()
            encoder = ranking.Encoder.load(model, ranking.lowercases(model, args.do_lower_case), args.target)
            scores = ranking.embedding_scores(encoder, args.target, args.candidates, read, "sentence")
        else:
            encoder = ranking.Encoder.load(args.bert_model, args.do_lower_case, args.target)
            scores = ranking.embedding_scores(encoder, args.target, args.candidates, read, "token")
        seconds = time.monotonic() - started
        result["methods"][method] = {"scores": scores, "ranking": ranking.rank(scores), "seconds": seconds}
        print(f"{method} ({seconds:.1f} s): " + ", ".join(f"{name} {scores[name]:.4g}" for name in ranking.rank(scores)),
              flush=True)
    if args.summary is not None:
        measured = ranking.measured_transfer(args.summary, args.target.name, [t.name for t in args.candidates])
        result["measured"] = {name: {"gain": gain, "score": score} for name, (gain, score) in measured.items()}
        result["evaluation"] = {method: ranking.evaluate(entry["scores"], measured)
                                for method, entry in result["methods"].items()}
        result["evaluation"]["random"] = ranking.random_ranking(measured)
        print(f"measured gain ({args.target.name}): " + ", ".join(
            f"{name} {100 * gain:+.1f}" for name, (gain, _) in sorted(measured.items(), key=lambda kv: -kv[1][0])))
        print("| method | NDCG@3 | Regret@1 | Regret@3 | Spearman |\n|---|---|---|---|---|")
        for method, scores in result["evaluation"].items():
            print(f"| {method} | {scores['ndcg@3']:.3f} | {scores['regret@1']:.3f} | {scores['regret@3']:.3f} "
                  f"| {scores['spearman']:.3f} |")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
