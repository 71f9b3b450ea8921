"""Training and evaluation speed of stilts next to transformers' Trainer, on one GLUE task.

    python scripts/benchmark.py --task rte --model .cache/models/all-MiniLM-L6-v2 [--bf16] [--json out.json]

The variants run one after another, each in a fresh subprocess (so that peak RSS is its own), on
the same examples, with the same learning rate, batch size, epochs, warmup, weight decay, seed and
precision:

  stilts                our Trainer: length-grouped batches, per-batch padding, length-sorted evaluation
  stilts_fixed_pad      our Trainer forced to the seed's fixed padding to --max_seq_length, random batches
  stilts_compiled       stilts with --torch_compile: length buckets of 32, and on a GPU CUDA graphs
  hf_trainer_fixed_pad  (c) transformers' Trainer as run_glue.py runs it by default (pad_to_max_length)
  hf_trainer_dynamic    (d) Trainer with DataCollatorWithPadding (per-batch padding, random batches)
  hf_trainer_grouped    (e) (d) with train_sampling_strategy="group_by_length"

All but stilts_compiled run by default on a CPU (compiling there takes minutes and did not pay); all
six on a GPU. Only training and evaluation are timed (examples/s); model loading and tokenization
are not, nor is compiling: stilts_compiled first compiles and records every batch shape of its
epochs and of scoring (Trainer.warm_up, reported as compile_s). `wall_s` is the whole variant as a
user waits for it (loading, tokenizing, compiling; in its own process, imports too). `--bf16` runs
every variant in bfloat16 autocast (the Trainer through TrainingArguments(bf16=True)); without it
every variant runs in fp32. `--same_process` runs the variants in this process instead (imports and compiler caches
are shared: scripts/gpu_speed.py's many runs), where peak RSS is not each variant's own and is not
reported; on a GPU each variant's peak device memory is reported either way.

Useful FLOPs count the matrix multiplications over real (unpadded) tokens only. For an example of
L tokens, with n layers, hidden size H, intermediate size I and C labels, one forward pass is

    n * (2*L*(4*H*H + 2*H*I) + 4*L*L*H) + 2*(H*H + H*C)

(per layer: the Q, K, V, output and two FFN projections on every token, then Q.K^T and attention.V;
the pooler and classifier on [CLS] only); training costs 3 forward passes (forward + backward).
This is BERT's count; for the other encoders (`--model` may be any encoder stilts fine-tunes,
docs/cli.md) it is the same formula over their config, an approximation (ModernBERT's gated FFN,
DeBERTa's relative attention and the heads differ).
Biases, LayerNorm, GELU, softmax and the embedding lookups are not counted. The useful FLOP/s is
reported as a fraction of the matmul peak measured here with one large torch.matmul, in each
precision that a variant runs in: the JSON's bf16 peak is null when none runs in bf16 (without
bf16 instructions one 2048^3 bf16 matmul takes a minute on a CPU), as is the fp32 peak when none
runs in fp32. `--bf16` on a CPU without bf16 instructions also prints stilts' one-line warning.
"""
import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from stilts.io import write_json  # noqa: E402
from stilts.settings import DataSettings, TrainSettings  # noqa: E402

VARIANTS = ("stilts", "stilts_fixed_pad", "stilts_compiled", "hf_trainer_fixed_pad", "hf_trainer_dynamic",
            "hf_trainer_grouped")
REFERENCES = {"hf_trainer_fixed_pad": "(c)", "hf_trainer_dynamic": "(d)", "hf_trainer_grouped": "(e)"}
DEFAULTS = TrainSettings()  # glue/train.py's defaults, for what the benchmark does not set itself


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, help="the seed's task name: rte, sst, cola, mrpc, stsb, qnli, ...")
    p.add_argument("--model", required=True, help="a local model folder (config.json, vocab.txt, weights)")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"), help="default $GLUE_DIR")
    p.add_argument("--data_dir", default=None, help="the task folder (default: GLUE_DIR/<official folder>)")
    p.add_argument("--max_train_examples", type=int, default=None, help="a seeded random subset, for short checks")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train_batch_size", type=int, default=TrainSettings.train_batch_size)
    p.add_argument("--max_seq_length", type=int, default=DataSettings.max_seq_length)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cased", action="store_true", help="BERT: keep case (default: lowercase, for uncased "
                   "models); other encoders normalise texts by their own tokenizer's rules")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for every variant (default: fp32)")
    p.add_argument("--no_cuda", action="store_true", help="run every variant on the CPU")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="default: all on a GPU, all but stilts_compiled on a CPU")
    p.add_argument("--same_process", action="store_true", help="run the variants in this process, not one each")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--run_variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: the child process
    p.add_argument("--result_path", help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------------ data
def task_and_data(args):
    from stilts.tasks import get_task, resolve_data_dir

    task = get_task(args.task)
    return task, resolve_data_dir(task, args.data_dir, args.glue_dir)


def train_indices(n_examples, args):
    """The training examples every variant uses: all, or the same seeded subset (file order)."""
    if args.max_train_examples is None or args.max_train_examples >= n_examples:
        return np.arange(n_examples)
    return np.sort(np.random.default_rng(args.seed).choice(n_examples, args.max_train_examples, replace=False))


def precision(args):
    """The precision every variant runs in."""
    return "bf16" if args.bf16 else "fp32"


def forward_flops(config, lengths, num_labels):
    """Matmul FLOPs of one forward pass over examples of these unpadded lengths (see the module doc)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    h, n = config.hidden_size, config.num_hidden_layers
    i = getattr(config, "intermediate_size", None) or config.hidden_dim  # DistilBERT calls it hidden_dim
    per_layer = 2 * lengths * (4 * h * h + 2 * h * i) + 4 * lengths ** 2 * h
    return float(np.sum(n * per_layer + 2 * (h * h + h * num_labels)))


# ------------------------------------------------------------------------------------------ child processes
def run_stilts(args, task, data_dir):
    import torch

    from stilts import distributed
    from stilts.checkpoints import load_weights
    from stilts.features import load_features
    from stilts.modeling import ModelSource, build_model
    from stilts.trainer import Trainer

    torch.manual_seed(args.seed)
    source = ModelSource(args.model)
    tokenizer = source.tokenizer(do_lower_case=not args.cased)
    model = build_model(source.config(), task)
    load_weights(model, "from_pretrained", pretrained_state=source.pretrained_encoder_state())
    train = load_features(task, "train", data_dir, tokenizer, args.max_seq_length)
    train = train.subset(train_indices(len(train), args))
    dev = load_features(task, "dev", data_dir, tokenizer, args.max_seq_length)

    settings = TrainSettings(train_batch_size=args.train_batch_size, eval_batch_size=args.train_batch_size,
                             learning_rate=args.learning_rate, num_train_epochs=args.epochs, seed=args.seed,
                             pad_to_max_length=args.run_variant == "stilts_fixed_pad",
                             torch_compile=args.run_variant == "stilts_compiled", bf16=args.bf16)
    ctx = distributed.init_distributed(no_cuda=args.no_cuda)
    compile_s = None
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(model, task, settings, ctx, output_dir, run_args={}, max_seq_length=args.max_seq_length,
                          verbose=False)
        if settings.torch_compile:
            start = time.perf_counter()
            trainer.warm_up(train, dev)
            compile_s = _elapsed(start, ctx.device)
        start = time.perf_counter()
        trainer.train(train)
        train_s = _elapsed(start, ctx.device)
        start = time.perf_counter()
        result = trainer.validate(dev)
        eval_s = _elapsed(start, ctx.device)
    return {"train_s": train_s, "eval_s": eval_s, "train_examples": len(train) * args.epochs,
            "eval_examples": len(dev), "dev_metric": result["metrics"][task.metric],
            "train_flops": 3 * args.epochs * forward_flops(model.config, train.lengths, task.num_labels),
            "precision": settings.precision, "device": str(ctx.device), "compile_s": compile_s}


def run_hf_trainer(args, task, data_dir):
    """transformers' Trainer set up as run_glue.py does by default (no evaluation during training)."""
    import torch
    from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, default_data_collator, set_seed)
    from transformers.utils import logging as hf_logging

    from stilts.metrics import compute_metrics

    hf_logging.set_verbosity_error()
    set_seed(args.seed)
    # Casing is BERT's flag, as in stilts; other encoders' tokenizers normalise by their own rules.
    bert = AutoConfig.from_pretrained(args.model).model_type == "bert"
    tokenizer = AutoTokenizer.from_pretrained(args.model, **({"do_lower_case": not args.cased} if bert else {}))
    # fp32 weights whatever the checkpoint stores (transformers 5 would keep an fp16 file's dtype),
    # as stilts loads them: autocast then decides the precision of both.
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=task.num_labels,
                                                               dtype=torch.float32)
    fixed = args.run_variant == "hf_trainer_fixed_pad"

    def dataset(examples):
        texts = [[e.text_a for e in examples]]
        if examples[0].text_b is not None:
            texts.append([e.text_b for e in examples])
        encoded = tokenizer(*texts, padding="max_length" if fixed else False, max_length=args.max_seq_length,
                            truncation=True)
        labels = task.label_ids(examples).tolist()  # Python numbers: the collators infer dtypes from them
        rows = [{key: encoded[key][j] for key in encoded} | {"label": labels[j]} for j in range(len(examples))]
        return rows, [sum(row["attention_mask"]) for row in rows]

    train_examples = task.read("train", data_dir)
    train, train_lengths = dataset([train_examples[j] for j in train_indices(len(train_examples), args)])
    dev, _ = dataset(task.read("dev", data_dir))

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.train_batch_size,
            per_device_eval_batch_size=args.train_batch_size, learning_rate=args.learning_rate,
            num_train_epochs=args.epochs, warmup_steps=DEFAULTS.warmup_proportion, weight_decay=DEFAULTS.weight_decay, seed=args.seed,
            eval_strategy="no", save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True,
            use_cpu=args.no_cuda or not torch.cuda.is_available(), bf16=args.bf16,
            train_sampling_strategy="group_by_length" if args.run_variant == "hf_trainer_grouped" else "random")
        collator = default_data_collator if fixed else DataCollatorWithPadding(tokenizer)
        trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collator,
                          processing_class=tokenizer)
        device = training_args.device
        start = time.perf_counter()
        trainer.train()
        train_s = _elapsed(start, device)
        start = time.perf_counter()
        output = trainer.predict(dev)
        eval_s = _elapsed(start, device)
    preds = task.predictions(output.predictions)
    metrics = compute_metrics(task, preds, output.label_ids)
    return {"train_s": train_s, "eval_s": eval_s, "train_examples": len(train) * args.epochs,
            "eval_examples": len(dev), "dev_metric": metrics[task.metric],
            "train_flops": 3 * args.epochs * forward_flops(model.config, train_lengths, task.num_labels),
            "precision": precision(args), "device": str(device), "compile_s": None}


def _elapsed(start, device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def child_main(args):
    """One variant: in its own process, or one after another in the benchmark's (--same_process)."""
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch._dynamo.reset()  # a variant compiles its own model, not a recompilation of the last one's
    cuda = torch.cuda.is_available() and not args.no_cuda
    if cuda:  # what an earlier variant left (--same_process) does not count towards this one's peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        left_over = torch.cuda.memory_allocated()
    task, data_dir = task_and_data(args)
    run = run_stilts if args.run_variant.startswith("stilts") else run_hf_trainer
    result = run(args, task, data_dir)
    own_process = not args.same_process
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if own_process else None
    result["peak_gpu_mb"] = (torch.cuda.max_memory_allocated() - left_over) / 2 ** 20 if cuda else None
    result["metric_name"] = task.metric
    write_json(args.result_path, result)


# ------------------------------------------------------------------------------------------ parent process
def matmul_peak(dtype, device):
    """FLOP/s of the best of several large square matmuls (the ceiling any implementation can reach)."""
    import torch

    n, reps = (8192, 20) if device.type == "cuda" else (2048, 6)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, _elapsed(start, device))
    return 2 * n ** 3 / best


def run_variant(argv, variant, result_path, same_process):
    """One variant, in a fresh process or in this one; returns its result dict with the wall time added."""
    variant_argv = [*argv, "--run_variant", variant, "--result_path", result_path]
    start = time.perf_counter()
    if same_process:
        child_main(build_parser().parse_args(variant_argv))
    else:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *variant_argv], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            sys.exit(f"benchmark: variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    wall_s = time.perf_counter() - start
    with open(result_path) as f:
        result = json.load(f)
    result["wall_s"] = wall_s
    result["train_examples_per_s"] = result["train_examples"] / result["train_s"]
    result["eval_examples_per_s"] = result["eval_examples"] / result["eval_s"]
    result["useful_train_flops_per_s"] = result["train_flops"] / result["train_s"]
    return result


def ratios(variants):
    """Train and eval examples/s of every variant divided by those of each Trainer variant that ran."""
    return {name: {kind: {ref: r[f"{kind}_examples_per_s"] / variants[ref][f"{kind}_examples_per_s"]
                          for ref in REFERENCES if ref in variants}
                   for kind in ("train", "eval")}
            for name, r in variants.items()}


def markdown(report):
    peaks = report["matmul_peak_flops_per_s"]
    metric = next(iter(report["variants"].values()))["metric_name"]
    measured = ", ".join(f"{peak / 1e9:.0f} GFLOP/s {name}" for name, peak in peaks.items() if peak is not None)
    lines = [f"**{report['task']}**, {os.path.basename(report['model'].rstrip('/'))}, "
             f"{report['train_examples']} train examples x {report['epochs']} epoch(s), batch "
             f"{report['train_batch_size']}, max_seq_length {report['max_seq_length']}, device "
             f"{report['device']}; matmul peak {measured}",
             "",
             f"| variant | precision | train ex/s | eval ex/s | wall s | compile s | peak RSS MB | peak GPU MB "
             f"| dev {metric} | useful train GFLOP/s | % of peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def number(value):
        return "-" if value is None else f"{value:.0f}"

    for name, r in report["variants"].items():
        flops = r["useful_train_flops_per_s"]
        lines.append(f"| {name} | {r['precision']} | {r['train_examples_per_s']:.1f} | "
                     f"{r['eval_examples_per_s']:.1f} | {r['wall_s']:.0f} | {number(r['compile_s'])} | "
                     f"{number(r['peak_rss_mb'])} | {number(r['peak_gpu_mb'])} | {r['dev_metric']:.4f} | "
                     f"{flops / 1e9:.1f} | {100 * flops / peaks[r['precision']]:.0f}% |")
    refs = [ref for ref in REFERENCES if ref in report["variants"]]
    if refs:
        header = [f"{kind} vs {REFERENCES[ref]}" for kind in ("train", "eval") for ref in refs]
        lines += ["", "| variant | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
        for name, by_kind in report["ratios"].items():
            cells = [f"{by_kind[kind][ref]:.2f}x" for kind in ("train", "eval") for ref in refs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the variants and prints (and with --json writes) the report, which it also returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.run_variant:
        return child_main(args)
    from stilts.errors import StiltsError

    try:
        task, data_dir = task_and_data(args)
        missing = [task.path(split, data_dir) for split in ("train", "dev")
                   if not os.path.isfile(task.path(split, data_dir))]
    except StiltsError as e:
        sys.exit(f"benchmark: {e}")
    if missing:
        sys.exit(f"benchmark: {missing[0]}: file not found")
    import torch

    from stilts.cpu import warn_if_slow_bf16

    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    names = args.variants or [name for name in VARIANTS if device.type == "cuda" or name != "stilts_compiled"]
    if args.bf16:
        warn_if_slow_bf16(device, "bf16")  # the variants' own warnings go to their captured stderr
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_peak(dtype, device) if name == precision(args) else None for name, dtype in dtypes.items()}
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"benchmark: running {name} ...", file=sys.stderr, flush=True)
            variants[name] = run_variant(argv, name, os.path.join(tmp, f"{name}.json"), args.same_process)
    report = {"task": task.name, "model": args.model, "device": str(device),
              "train_examples": next(iter(variants.values()))["train_examples"] // args.epochs, "epochs": args.epochs,
              "train_batch_size": args.train_batch_size, "max_seq_length": args.max_seq_length,
              "learning_rate": args.learning_rate, "seed": args.seed, "bf16": args.bf16,
              "matmul_peak_flops_per_s": peaks, "variants": variants, "ratios": ratios(variants)}
    print(markdown(report))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
