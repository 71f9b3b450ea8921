"""The GPU measurements of issue 18 in one run, sized for a short loan of a GPU (about ten minutes).

    python scripts/gpu_speed.py --glue_dir $GLUE_DIR --model .cache/models/all-MiniLM-L6-v2 --out gpu-results
    python scripts/gpu_speed.py --smoke --out /tmp/gpu-smoke    # on a CPU: every part, tiny (a few minutes)

The parts run in this order. Each is written to OUT/gpu_speed.json (and its tables to OUT/gpu_speed.md)
as it goes; a part that fails is recorded with its error (and what it had measured) and the next one
runs; a part that would start with less than --reserve_s of --budget_s left is recorded as skipped,
and at --budget_s (counted from the start of the process) the part under way is cut short, keeping
what it had measured. --parts runs some of them (a later loan of a GPU can take the ones a first
one had no time for).

  environment  GPU, driver, torch, CUDA, transformers; the dense matmul peak in bf16 and fp32
  equivalence  on this device, without dropout, on a two-layer BERT-base with random weights: per-batch
               padding, length buckets and the compiled model (CUDA graphs on a GPU) against the seed's
               fixed padding, in fp32 and bf16: the relative difference of the evaluation logits and
               of one training step's update
  benchmark_bf16  scripts/benchmark.py (each variant on its own, in this process) for --model and
               for a BERT-base with random weights, on RTE, MRPC and SST-2 (--sst_examples of its
               train set), all in bf16
  large        BERT-large with random weights at batch 32 and 128 tokens in bf16, on RTE's real
               lengths: train examples/s and model FLOPs over real tokens against the bf16 peak,
               eager and compiled, each with a profile of some steps (GPU kernel time by kind, and
               the share of the wall time the GPU was busy) in OUT/large_profile_{eager,compiled}.txt
  benchmark_fp32  the same benchmarks in fp32

--smoke replaces the models by a tiny random BERT, the data by the test fixtures and the device by
the CPU, so that every part runs in the test suite (tests/test_speed_paths.py).
"""
import time

STARTED = time.monotonic()  # the budget counts the imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import benchmark  # noqa: E402  (scripts/ is on sys.path when this file runs)
from stilts.distributed import DistContext  # noqa: E402
from stilts.features import load_features  # noqa: E402
from stilts.io import atomic_write, write_json  # noqa: E402
from stilts.modeling import ModelSource, build_model  # noqa: E402
from stilts.settings import TrainSettings  # noqa: E402
from stilts.tasks import get_task, resolve_data_dir  # noqa: E402
from stilts.trainer import Trainer  # noqa: E402

TASKS = ("rte", "mrpc", "sst")
PARTS = ("environment", "equivalence", "benchmark_bf16", "large", "benchmark_fp32")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "glue")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_speed.json, gpu_speed.md, the profiles")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"), help="GLUE's folders (default $GLUE_DIR)")
    p.add_argument("--model", help="a pretrained model folder (all-MiniLM-L6-v2)")
    p.add_argument("--sst_examples", type=int, default=4000, help="SST-2 train examples (a seeded subset)")
    p.add_argument("--budget_s", type=float, default=540, help="seconds the whole run may take, imports included")
    p.add_argument("--reserve_s", type=float, default=75, help="no part or benchmark starts with less left")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="default: all, in this order")
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU, with the test fixtures")
    return p


class OutOfTime(Exception):
    """Raised by the alarm at the end of --budget_s."""


class Report:
    """The results so far, rewritten (atomically) at every step: a run cut short keeps them."""

    def __init__(self, out, budget_s, reserve_s, wanted):
        self.out, self.deadline, self.reserve_s, self.wanted = out, STARTED + budget_s, reserve_s, wanted
        self.parts, self.tables = {}, []
        os.makedirs(out, exist_ok=True)

    def has_time(self):
        """Whether more than --reserve_s of the budget is left: room to start something."""
        return self.deadline - time.monotonic() > self.reserve_s

    def run(self, name, function, *args):
        """One part: its result, or what it had measured and its error, or 'skipped' past the budget."""
        if name not in self.wanted:
            return
        if not self.has_time():
            self.parts[name] = {"skipped": "budget"}
        else:
            print(f"gpu_speed: {name} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            try:
                self.parts[name] = function(self, *args)
            except (Exception, SystemExit) as e:  # recorded with what the part had saved; the next part runs
                self.parts[name] = {**self.parts.get(name, {}), **failure(e)}
            self.parts[name]["seconds"] = time.monotonic() - start
        self.save()

    def failures(self):
        """The names of the parts, and of the runs inside them, that failed."""
        return [f"{name}/{key}" if key else name for name, part in self.parts.items()
                for key, value in [("", part), *part.items()]
                if isinstance(value, dict) and ("error" in value or "compiled_error" in value)]

    def table(self, text):
        """A markdown table for gpu_speed.md (and the output)."""
        self.tables.append(text)
        print(text, flush=True)
        self.save()

    def save(self):
        """gpu_speed.json and gpu_speed.md as they stand, each written atomically."""
        write_json(os.path.join(self.out, "gpu_speed.json"), self.parts)
        with atomic_write(os.path.join(self.out, "gpu_speed.md")) as f:
            f.write("\n\n".join(self.tables) + "\n")


# ---------------------------------------------------------------------------------------------- inputs
def random_bert(folder, smoke):
    """A BERT-base folder with random weights (config and vocab from cache/bert_metadata; --smoke: a
    tiny BERT), loadable by stilts and by transformers' Trainer alike."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    source = ModelSource("bert-base-uncased")
    config = tiny_config() if smoke else BertConfig(**source.config().to_dict())
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab_file=source.vocab(), do_lower_case=True).save_pretrained(folder)
    shutil.copy(source.vocab(), os.path.join(folder, "vocab.txt"))  # stilts' BERT reads vocab.txt
    return folder


def failure(error):
    """An error as the report records it: what it was, and where."""
    return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}


def tiny_config():
    """--smoke's stand-in for BERT-base and BERT-large: two layers, hidden size 32."""
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def synchronize(device):
    """Wait for the device, before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- parts
def environment(report, device):
    """What ran, where, and the two matmul ceilings the other parts are held against."""
    import transformers

    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device.type == "cuda":
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except OSError as e:  # no nvidia-smi: the rest still counts
            info["nvidia_smi"] = f"not run ({e})"
    info["matmul_peak_flops_per_s"] = {name: benchmark.matmul_peak(dtype, device)
                                       for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    report.table(f"**{info['device']}**, torch {info['torch']} (CUDA {info['cuda']}), transformers "
                 f"{info['transformers']}, {info.get('nvidia_smi', '')}; matmul peak "
                 + ", ".join(f"{v / 1e12:.1f} TFLOP/s {k}" for k, v in info["matmul_peak_flops_per_s"].items()))
    return info


def equivalence(report, device, rte_dir, smoke):
    """Each speed path against fixed padding, as tests/test_speed_paths.py checks on the CPU, on a
    two-layer BERT-base with random weights (BERT-base's kernels, a quarter of its compile time)."""
    task = get_task("rte")
    source = ModelSource("bert-base-uncased")
    config = tiny_config() if smoke else source.config()
    config.num_hidden_layers = 2
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = build_model(config, task)
    features = load_features(task, "dev", rte_dir, source.tokenizer(do_lower_case=True), 128)
    batch = np.flatnonzero(features.lengths < 100)[:16]
    paths = {"per batch": {}, "buckets of 32": {"pad_to_multiple_of": 32}, "compiled": {"torch_compile": True}}
    results = {}
    for precision in ("fp32", "bf16"):
        outcomes = {}
        for path, speed in {"fixed": {"pad_to_max_length": True}, **paths}.items():
            torch._dynamo.reset()
            settings = TrainSettings(eval_batch_size=32, learning_rate=1e-4, seed=3, bf16=precision == "bf16",
                                     **speed)
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(copy.deepcopy(model), task, settings, DistContext(device=device), tmp, run_args={},
                                  max_seq_length=128, verbose=False)
                if settings.torch_compile:  # the scores and the step below then replay recorded graphs
                    trainer.warm_up(features.subset(batch), features)
                logits, _ = trainer.predict(features)
                before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
                trainer.make_optimizer(total_steps=1)
                trainer.wrapped.train()
                trainer.train_step(features, batch)
                # All parameters as one vector: a tensor whose gradient is zero in exact arithmetic
                # (the keys' bias) gets an Adam update made of rounding noise alone.
                update = torch.cat([(p.detach() - before[n]).flatten().cpu() for n, p in
                                    trainer.model.named_parameters()])
            outcomes[path] = torch.from_numpy(logits), update
        ref_logits, ref_update = outcomes.pop("fixed")
        results[precision] = {path: {"logits_rel": relative(logits, ref_logits),
                                     "update_rel": relative(update, ref_update)}
                              for path, (logits, update) in outcomes.items()}
    counters = {k: v for k, v in torch._dynamo.utils.counters["inductor"].items() if "cudagraph" in k}
    lines = ["| path | fp32 logits | fp32 update | bf16 logits | bf16 update |", "|---|---:|---:|---:|---:|"]
    for path in paths:
        cells = [f"{results[p][path][k]:.1e}" for p in ("fp32", "bf16") for k in ("logits_rel", "update_rel")]
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    report.table("Speed paths against fixed padding (relative difference, RTE dev, one step):\n\n" + "\n".join(lines))
    return {"relative_difference": results, "cudagraph_counters": counters}


def relative(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def benchmarks(report, device, models, glue_dir, precision, tasks, sst_examples, smoke):
    """scripts/benchmark.py for each model and task, each variant on its own: a variant that fails is
    recorded with its error, and the others' figures stay."""
    part = f"benchmark_{precision}"
    results = report.parts[part] = {}  # saved as it grows
    for model_name, model_dir in models.items():
        for task in tasks:
            key = f"{model_name}/{task}/{precision}"
            if not report.has_time():
                results[key] = {"skipped": "budget"}
                continue
            argv = ["--task", task, "--model", model_dir, "--glue_dir", glue_dir, "--same_process",
                    "--learning_rate", "1e-4"]
            if precision == "bf16":
                argv.append("--bf16")
            if task == "sst" or smoke:
                argv += ["--max_train_examples", str(16 if smoke else sst_examples)]
            if device.type == "cpu":
                argv.append("--no_cuda")
            merged, errors = None, {}
            for variant in benchmark.VARIANTS:
                try:  # its own output goes to a log; the merged table comes at the end
                    with open(os.path.join(report.out, "benchmark_output.log"), "a") as log, \
                            contextlib.redirect_stdout(log):
                        result = benchmark.main(argv + ["--variants", variant])
                except OutOfTime:
                    raise
                except (Exception, SystemExit) as e:
                    errors[variant] = failure(e)
                    continue
                if merged is None:
                    merged = result
                else:
                    merged["variants"].update(result["variants"])
            if merged is None:
                results[key] = {"error": "every variant failed", "variants": errors}
            else:
                merged["ratios"] = benchmark.ratios(merged["variants"])
                if errors:
                    merged["error"] = f"failed: {', '.join(errors)}"
                    merged["failed_variants"] = errors
                results[key] = merged
                report.table(f"{model_name}, {precision}\n\n" + benchmark.markdown(merged))
            report.save()
    return results


def large(report, device, rte_dir, smoke, out):
    """BERT-large's training speed on real lengths, against the bf16 matmul peak, eager then compiled,
    each with a profile of some steps."""
    task = get_task("rte")
    source = ModelSource("bert-large-uncased")
    config = tiny_config() if smoke else source.config()
    features = load_features(task, "train", rte_dir, source.tokenizer(do_lower_case=True), 128)
    flops = 3 * benchmark.forward_flops(config, features.lengths, task.num_labels)
    measured = report.parts.get("environment", {}).get("matmul_peak_flops_per_s", {})
    peak = measured.get("bf16") or benchmark.matmul_peak(torch.bfloat16, device)
    results = report.parts["large"] = {}  # saved as it grows
    lines = [f"BERT-large (random weights), RTE train ({len(features)} examples, mean "
             f"{features.lengths.mean():.0f} tokens), batch 32, bf16; bf16 peak {peak / 1e12:.0f} TFLOP/s",
             "", "| path | train ex/s | model TFLOP/s | share of bf16 peak | compile s | peak GPU MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in ("eager", "compiled"):
        if not report.has_time():
            results[name] = {"skipped": "budget"}
            continue
        torch._dynamo.reset()
        gc.collect()
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        settings = TrainSettings(train_batch_size=32, learning_rate=1e-5, num_train_epochs=1, seed=0, bf16=True,
                                 torch_compile=name == "compiled")
        trainer = Trainer(build_model(config, task), task, settings, DistContext(device=device),
                          tempfile.mkdtemp(), run_args={}, max_seq_length=128, verbose=False)
        start = time.perf_counter()
        if settings.torch_compile:
            trainer.warm_up(features)
        synchronize(device)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train(features)
        synchronize(device)
        seconds = time.perf_counter() - start
        r = results[name] = {
            "train_examples_per_s": len(features) / seconds, "model_tflops_per_s": flops / seconds / 1e12,
            "share_of_bf16_peak": flops / seconds / peak, "compile_s": compile_s if settings.torch_compile else None,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None}
        lines.append(f"| {name} | {r['train_examples_per_s']:.0f} | {r['model_tflops_per_s']:.1f} | "
                     f"{100 * r['share_of_bf16_peak']:.0f}% | {r['compile_s'] or 0:.0f} | "
                     f"{r['peak_gpu_mb'] or 0:.0f} |")
        report.save()
        try:
            r["profile"] = p = profile(trainer, features, device, os.path.join(out, f"large_profile_{name}.txt"))
            lines.append(f"|  | profile of {p['steps']} steps: GPU busy {100 * p['busy_share']:.0f}% of the wall "
                         "time; kernel time " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["kernel_share"].items())
                         + " | | | | |")
        except OutOfTime:
            raise
        except Exception as e:  # the timing stands without its profile
            r["profile"] = failure(e)
        del trainer
    report.table("\n".join(lines))
    return results


# Kernel names by kind, first match wins: memory-efficient attention's kernels are CUTLASS ones too.
KINDS = (("attention", ("flash", "fmha", "attention", "efficient")),
         ("matmul", ("gemm", "matmul", "mm_", "cutlass", "sm90_xmma", "nvjet", "addmm", "bmm")),
         ("optimizer", ("adam", "multi_tensor", "foreach")))


def profile(trainer, features, device, path, steps=8):
    """Kernel time by kind over some training steps, and how busy the GPU was over their wall time.
    The steps are batches of the epoch just trained: shapes the compiled model has recorded."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    from stilts.trainer import epoch_batches

    batches = epoch_batches(features.lengths, trainer.settings.train_batch_size, trainer.settings.seed, 0,
                            trainer.settings.group_by_length)[:steps]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for indices in batches:
            trainer.train_step(features, indices)
        synchronize(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    if device.type == "cuda":  # the kernels themselves, not the operators that launched them
        kernels = {e.key: e.self_device_time_total for e in events
                   if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0}
    else:
        kernels = {e.key: e.self_cpu_time_total for e in events if e.self_cpu_time_total > 0}
    total = sum(kernels.values()) or 1.0
    share = {kind: 0.0 for kind, _ in KINDS}
    share["other"] = 0.0
    for key, us in kernels.items():
        kind = next((k for k, words in KINDS if any(w in key.lower() for w in words)), "other")
        share[kind] += us / total
    with atomic_write(path) as f:
        sort = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        f.write(events.table(sort_by=sort, row_limit=60))
    return {"steps": len(batches), "wall_s": wall, "kernel_s": total / 1e6, "busy_share": total / 1e6 / wall,
            "kernel_share": share}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = build_parser().parse_args(argv)
    report = Report(args.out, args.budget_s, args.reserve_s, args.parts)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def out_of_time(signum, frame):
        raise OutOfTime(f"cut short at --budget_s {args.budget_s:g}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(max(1, int(report.deadline - time.monotonic())))
    work = tempfile.mkdtemp(prefix="gpu-speed-")
    if args.smoke:
        device, glue_dir, tasks = torch.device("cpu"), FIXTURES, ("rte",)
        models = {"tiny": random_bert(os.path.join(work, "tiny"), smoke=True)}
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_speed: no CUDA device (--smoke runs the parts on the CPU)")
        if not (args.model and args.glue_dir):
            sys.exit("gpu_speed: --model and --glue_dir (or $GLUE_DIR) are needed")
        device, glue_dir, tasks = torch.device("cuda"), args.glue_dir, TASKS
        models = {os.path.basename(args.model.rstrip("/")): args.model}
        if {"benchmark_bf16", "benchmark_fp32"} & set(args.parts):
            models["bert-base-random"] = random_bert(os.path.join(work, "bert-base"), smoke=False)
    rte_dir = resolve_data_dir(get_task("rte"), None, glue_dir)
    report.run("environment", environment, device)
    report.run("equivalence", equivalence, device, rte_dir, args.smoke)
    report.run("benchmark_bf16", benchmarks, device, models, glue_dir, "bf16", tasks, args.sst_examples, args.smoke)
    report.run("large", large, device, rte_dir, args.smoke, args.out)
    report.run("benchmark_fp32", benchmarks, device, models, glue_dir, "fp32", tasks, args.sst_examples, args.smoke)
    signal.alarm(0)
    shutil.rmtree(work, ignore_errors=True)
    failed = report.failures()
    print(f"gpu_speed: done; results in {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
