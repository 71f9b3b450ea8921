"""Training throughput of randomly initialised BERT-base / BERT-large in fp32, bf16 and fp16.

    python scripts/gpu_throughput.py --json throughput.json            # on a GPU: under 3 minutes on an H100
    python scripts/gpu_throughput.py --device cpu --steps 2 --warmup 0 --models base --batch_size 4 --seq_len 32

Each step is our Trainer's own optimizer step (batch cut on the device, autocast, GradScaler for fp16, fused AdamW,
gradient clipping) on synthetic batches of full-length rows (batch_size x seq_len, no padding), so
examples/s is the ceiling of a real run at that length. Models come from the configs in
cache/bert_metadata (random weights: speed does not depend on them), or from any bert_config.json
path. Prints a markdown table; --json also writes the numbers.
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig  # noqa: E402

from benchmark import forward_flops  # noqa: E402  (scripts/ is on sys.path when this file runs)
from stilts.distributed import DistContext  # noqa: E402
from stilts.features import Features  # noqa: E402
from stilts.modeling import ModelSource, build_model  # noqa: E402
from stilts.tasks import get_task  # noqa: E402
from stilts.settings import TrainSettings  # noqa: E402
from stilts.trainer import Trainer  # noqa: E402

MODELS = {"base": "bert-base-uncased", "large": "bert-large-uncased"}  # resolved to cache/bert_metadata
PRECISIONS = ("fp32", "bf16", "fp16")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="base, large, or paths to a bert_config.json")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA kernel selection, caches)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--json", default=None, metavar="PATH")
    return p


def model_config(name):
    if name in MODELS:
        return ModelSource(MODELS[name]).config()  # $BERT_ALL_DIR or cache/bert_metadata
    return BertConfig.from_json_file(name)


def synthetic_features(config, n, seq_len, seed=0):
    """n full-length rows of random word pieces, half of each row in segment B."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, size=(n, seq_len))
    return Features(list(ids), np.full(n, seq_len // 2), rng.integers(0, 2, size=n))


def throughput(config, precision, args):
    """Examples/s of our training step for one model and precision."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(config, get_task("rte"))
    settings = TrainSettings(train_batch_size=args.batch_size, bf16=precision == "bf16", fp16=precision == "fp16",
                             seed=0)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(model, get_task("rte"), settings, DistContext(device=device), output_dir, run_args={},
                          max_seq_length=args.seq_len, verbose=False)
        trainer.make_optimizer(total_steps=args.warmup + args.steps)
        trainer.wrapped.train()
        features = synthetic_features(config, args.batch_size, args.seq_len)
        batch = np.arange(args.batch_size)
        for _ in range(args.warmup):
            trainer.train_step(features, batch)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(features, batch)
        synchronize(device)
        seconds = time.perf_counter() - start
    examples_per_s = args.steps * args.batch_size / seconds
    flops_per_example = 3 * forward_flops(config, [args.seq_len], num_labels=2)
    return {"train_examples_per_s": examples_per_s, "train_tflops_per_s": examples_per_s * flops_per_example / 1e12}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {}
    for model_name in args.models:
        config = model_config(model_name)
        results[model_name] = {}
        for precision in args.precisions:
            print(f"gpu_throughput: {model_name} {precision} ...", file=sys.stderr, flush=True)
            results[model_name][precision] = throughput(config, precision, args)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    lines = [f"{name}, batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps "
             f"(train examples/s; model TFLOP/s in brackets)", "",
             "| model | " + " | ".join(args.precisions) + " |", "|---|" + "---:|" * len(args.precisions)]
    for model_name, by_precision in results.items():
        cells = [f"{r['train_examples_per_s']:.1f} ({r['train_tflops_per_s']:.1f})" for r in by_precision.values()]
        lines.append(f"| {model_name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
