"""What a finished study found: summary.json, summary.md, summary.png, and with --compare the
transfer matrix (transfer_matrix.md, transfer_matrix.png), from the runs' val_metrics.json.

A study has arms: one STILTs arm per intermediate task ("stilts" when there is one intermediate,
"stilts:<intermediate>" when there are several) and, with --compare, the baseline. Runs of
different arms with the same seed pair up, and the gain of a STILTs arm is the mean of its paired
differences to the baseline, with a 95% interval (stilts.gains).
"""
import json
import math
import os
import shutil

import numpy as np

from stilts import imported
from stilts.errors import StiltsError
from stilts.gains import excludes_zero, paired_gain
from stilts.io import atomic_write, read_json
from stilts.run_folder import dev_metrics

DEGENERATE_TOLERANCE = 1e-9  # "at or below the baseline", robust to float rounding


def majority_baselines(study, examples):
    """Each target's dev metric when always predicting the most frequent training label; `examples`
    holds the study's splits as stilts-run read them, {(task name, split, folder): examples}."""
    from stilts.metrics import majority_baseline  # scikit-learn and SciPy: after parsing
    from stilts.tasks import resolve_data_dir

    out = {}
    for target in study.targets:
        task = study.tasks[target]
        folder = resolve_data_dir(task, glue_dir=study.glue_dir)
        # Label ids, as the trainer scores them: the TSVs' label strings ('0'/'1' for MRPC and QQP)
        # are not the positive label 1 that F1 needs.
        train_labels = task.label_ids(examples[task.name, "train", folder])
        dev_labels = task.label_ids(examples[task.name, "dev", folder])
        out[target] = majority_baseline(task, train_labels, dev_labels)[task.metric]
    return out


def run_value(study, run):
    """The run's dev score on its task's metric, from its val_metrics.json."""
    metric = study.tasks[run.task].metric
    metrics = dev_metrics(run.folder)
    if metric not in metrics:
        raise StiltsError(f"{os.path.join(run.folder, 'val_metrics.json')}: no dev {metric} in it")
    return float(metrics[metric])


def summarize(study, arms, runs, baselines):
    """The summary.json dict; run folders are given relative to the study folder."""
    intermediates = [arm.intermediate for arm in arms if arm.intermediate]
    summary = ({"intermediate": intermediates[0]} if len(intermediates) == 1 else {"intermediates": intermediates})
    summary["targets"] = {}
    for target in study.targets:
        entry = {"majority_baseline": baselines[target]}
        for arm in arms:
            mine = [r for r in runs if r.task == target and r.arm == arm.key]
            if mine:
                entry[arm.key] = arm_summary(study, target, mine, baselines[target])
        if "baseline" in entry:
            baseline = {r["seed"]: r["value"] for r in entry["baseline"]["runs"]}
            for arm in arms:
                if arm.intermediate and arm.key in entry:
                    entry[arm.key]["gain"] = paired_gain({r["seed"]: r["value"] for r in entry[arm.key]["runs"]},
                                                         baseline)
        summary["targets"][target] = entry
    taken = {name: source for name in intermediates if (source := imported.imported_from(study, name))}
    if taken:  # intermediates taken as they are (--intermediate NAME=MODEL): where each came from
        summary["intermediates_from"] = taken
    samples = {name: sample for name in intermediates if (sample := stage_a_dev_sample(study, name))}
    if samples:  # --intermediate_dev_examples: those dev scores are a sample's
        summary["intermediate_dev_sample"] = samples
    return summary


def stage_a_dev_sample(study, intermediate):
    """{split: {"rows", "seed"}} when the stage A scored a sample of its dev set, else None."""
    path = os.path.join(study.output_dir, f"intermediate_{intermediate}", "val_metrics.json")
    sample = read_json(path, dict).get("dev_sample") if os.path.isfile(path) else None
    return sample if isinstance(sample, dict) else None


def arm_summary(study, target, runs, baseline):
    values = np.array([run_value(study, r) for r in runs])
    best = int(np.nanargmax(values)) if not np.isnan(values).all() else 0  # first of equal bests
    # NaN (a diverged run) is never above the baseline, so it counts as degenerate.
    degenerate = int(sum(not v > baseline + DEGENERATE_TOLERANCE for v in values))
    return {
        "metric": study.tasks[target].metric,
        "runs": [{"seed": r.seed, "dir": relative(study, r.folder), "value": float(v)} for r, v in zip(runs, values)],
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,  # sample standard deviation
        "min": float(values.min()),
        "max": float(values.max()),
        "degenerate": degenerate,
        "best_dir": relative(study, runs[best].folder),
    }


def relative(study, folder):
    return os.path.relpath(folder, study.output_dir).replace(os.sep, "/")


def summary_intermediates(summary):
    """The intermediate tasks of a summary.json, one-intermediate or grid."""
    return [summary["intermediate"]] if "intermediate" in summary else list(summary.get("intermediates", []))


def stilts_arm_key(summary, intermediate):
    """The key of an intermediate's STILTs arm in a target's entry ("stilts" alone with one intermediate)."""
    return "stilts" if "intermediate" in summary else f"stilts:{intermediate}"


def arm_entries(entry):
    """(key, summary) of each arm of a target's entry, in the study's order."""
    return [(key, value) for key, value in entry.items() if isinstance(value, dict) and "runs" in value]


def best_run(entry):
    """(arm key, run) of a target's best dev run, any arm (the first of equal bests), or None."""
    candidates = [(key, run) for key, arm in arm_entries(entry) for run in arm["runs"]]
    if not candidates:
        return None
    return max(candidates, key=lambda pair: -np.inf if np.isnan(pair[1]["value"]) else pair[1]["value"])


def export_best(study, summary):
    """Copy the test predictions of each target's best dev run (any arm) into
    OUT/submission_input/<target>/, the layout the submission export reads."""
    for target, entry in summary["targets"].items():
        found = best_run(entry)
        if found is None:
            continue
        best = found[1]
        source = os.path.join(study.output_dir, best["dir"])
        names = sorted(n for n in os.listdir(source) if n.endswith(("test_preds.csv", "test_predictions.csv"))
                       and os.path.isfile(os.path.join(source, n)))  # the task's and its companions'
        if not names:
            entry["submission_from"] = None
            continue
        dest = os.path.join(study.output_dir, "submission_input", target)
        os.makedirs(dest, exist_ok=True)
        for name in names:
            with open(os.path.join(source, name), "rb") as f_in, atomic_write(os.path.join(dest, name), "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
        entry["submission_from"] = best["dir"]


def format_gain(gain):
    """'+3.1 [-0.5, +6.7]*' (x100; * when the interval excludes 0)."""
    if gain["paired_runs"] == 0:
        return "no pairs"
    mean = f"{100 * gain['mean']:+.1f}"
    if gain["interval"] is None:
        return f"{mean} (1 pair)"
    star = "*" if excludes_zero(gain) else ""
    return f"{mean} [{100 * gain['ci95_low']:+.1f}, {100 * gain['ci95_high']:+.1f}]{star}"


def markdown(study, summary):
    title = summary.get("intermediate") or ", ".join(summary["intermediates"])
    compare = any("baseline" in entry for entry in summary["targets"].values())
    lines = [f"# STILTs study: intermediate task{'s' if 'intermediates' in summary else ''} {title}", "",
             "Dev-set scores (x100) over restarts; a run is degenerate when it scores at or below the "
             "majority-class baseline." + (" Gain: the mean of the paired (same seed) differences to the baseline, "
                                           "with its 95% interval; * where it excludes 0." if compare else ""), "",
             "| target | arm | metric | mean ± std | min | max | degenerate/restarts | gain | best run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for target, entry in summary["targets"].items():
        for key, s in arm_entries(entry):
            gain = format_gain(s["gain"]) if "gain" in s else ""
            lines.append(f"| {target} | {key} | {s['metric']} | {100 * s['mean']:.1f} ± {100 * s['std']:.1f} "
                         f"| {100 * s['min']:.1f} | {100 * s['max']:.1f} | {s['degenerate']}/{len(s['runs'])} "
                         f"| {gain} | {s['best_dir']} |")
    lines.append("")
    lines.append("Majority-class baseline (dev): " + "; ".join(
        f"{t} {study.tasks[t].metric} {100 * e['majority_baseline']:.1f}" for t, e in summary["targets"].items()))
    for intermediate in summary_intermediates(summary):
        stage_a = os.path.join(study.output_dir, f"intermediate_{intermediate}")
        if intermediate in summary.get("intermediates_from", {}):
            lines.append(f"Intermediate {intermediate}: the encoder of {summary['intermediates_from'][intermediate]}, "
                         f"taken as it is (no stage A)")
        elif os.path.isfile(os.path.join(stage_a, "val_metrics.json")):
            metrics = dev_metrics(stage_a)
            sample = summary.get("intermediate_dev_sample", {}).get(intermediate)
            where = "dev" if not sample else "dev, a sample of " + ", ".join(
                f"{entry.get('rows')} rows ({split.replace('_', ' ')})" for split, entry in sample.items())
            lines.append(f"Intermediate {intermediate} ({where}): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items()))
    exported = [f"{t} from {e['submission_from']}" for t, e in summary["targets"].items() if e.get("submission_from")]
    if exported:
        lines.append("Test predictions in submission_input/: " + "; ".join(exported))
    if summary.get("missing"):
        lines.append(f"Missing (failed, or their stage A failed): {', '.join(summary['missing'])}")
    return "\n".join(lines) + "\n"


def transfer_matrix(summary):
    """Rows (intermediates) x columns (targets with a baseline) of each STILTs arm's gain, and the
    degenerate runs."""
    intermediates = summary_intermediates(summary)
    targets = [target for target, entry in summary["targets"].items() if "baseline" in entry]
    cells = {}
    for target, entry in summary["targets"].items():
        for intermediate in intermediates:
            arm = entry.get(stilts_arm_key(summary, intermediate))
            if arm and "gain" in arm:
                cells[intermediate, target] = (arm["gain"], arm["degenerate"], len(arm["runs"]),
                                               entry["baseline"]["degenerate"])
    return intermediates, targets, cells


def transfer_matrix_markdown(summary):
    intermediates, targets, cells = transfer_matrix(summary)
    metric = {t: summary["targets"][t]["baseline"]["metric"] for t in targets}
    lines = ["# Transfer matrix: what each intermediate task adds to each target", "",
             "Each cell: the mean gain of STILTs over the baseline on the target's dev metric (x100), over runs "
             "paired by seed, with its 95% interval (t interval from 5 pairs on, else a percentile bootstrap); "
             "* where the interval excludes 0. In brackets: degenerate runs (at or below the majority class), "
             "STILTs / baseline, of the restarts.", "",
             "| intermediate | " + " | ".join(f"{t} ({metric[t]})" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for intermediate in intermediates:
        row = []
        for target in targets:
            if (intermediate, target) not in cells:
                row.append("")
                continue
            gain, degenerate, restarts, baseline_degenerate = cells[intermediate, target]
            row.append(f"{format_gain(gain)} ({degenerate}/{baseline_degenerate} of {restarts})")
        lines.append(f"| {intermediate} | " + " | ".join(row) + " |")
    lines.append("| *baseline score* | " + " | ".join(
        f"{100 * summary['targets'][t]['baseline']['mean']:.1f} ± {100 * summary['targets'][t]['baseline']['std']:.1f}"
        for t in targets) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, path):
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot(summary, path):
    """Dev score per restart of each arm, one panel per target; False without matplotlib, None when no
    run finished."""
    plt = _pyplot()
    if plt is None:
        return False
    targets = {target: entry for target, entry in summary["targets"].items() if arm_entries(entry)}
    if not targets:
        return None  # nothing to draw
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.5), squeeze=False)
    for ax, (target, entry) in zip(axes[0], targets.items()):
        arms = arm_entries(entry)
        for number, (key, arm) in enumerate(arms):
            offset = 0.16 * (number - (len(arms) - 1) / 2) / max(1, len(arms) - 1) * 2
            runs = arm["runs"]
            ax.plot([i + offset for i in range(len(runs))], [100 * r["value"] for r in runs], "o", label=key)
            ax.set_xticks(range(len(runs)), [str(r["seed"]) for r in runs])
        ax.axhline(100 * entry["majority_baseline"], color="gray", linestyle="--", label="majority class")
        ax.set_title(target)
        ax.set_xlabel("restart (seed)")
        ax.set_ylabel(f"dev {arms[0][1]['metric']} (x100)")
        ax.legend(fontsize="small")
    _save(fig, plt, path)
    return True


def plot_transfer_matrix(summary, path):
    """A heat map of the mean gains (x100), * where the interval excludes 0; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    intermediates, targets, cells = transfer_matrix(summary)
    gains = np.full((len(intermediates), len(targets)), np.nan)
    for (intermediate, target), (gain, *_) in cells.items():
        gains[intermediates.index(intermediate), targets.index(target)] = 100 * gain["mean"]
    limit = max(1e-9, np.nanmax(np.abs(gains))) if np.isfinite(gains).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(targets) + 2.5), 0.7 * len(intermediates) + 1.8))
    image = ax.imshow(gains, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (intermediate, target), (gain, degenerate, restarts, baseline_degenerate) in cells.items():
        star = "*" if excludes_zero(gain) else ""
        dark = abs(100 * gain["mean"]) > 0.6 * limit  # white text on the darkest cells
        ax.text(targets.index(target), intermediates.index(intermediate),
                f"{100 * gain['mean']:+.1f}{star}\n{degenerate}/{baseline_degenerate} deg.",
                ha="center", va="center", fontsize="small", color="white" if dark else "black")
    ax.set_xticks(range(len(targets)), targets)
    ax.set_yticks(range(len(intermediates)), intermediates)
    ax.set_xlabel("target")
    ax.set_ylabel("intermediate")
    ax.set_title("gain over the baseline (dev, x100)\n* 95% interval excludes 0; deg.: degenerate runs "
                 "STILTs/baseline", fontsize="small")
    fig.colorbar(image, ax=ax)
    _save(fig, plt, path)
    return True


def json_safe(value):
    """NaN (a diverged run, a gain without pairs) as null: strict JSON readers reject a bare NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def write_summary(study, arms, runs, baselines, missing=()):
    """The summary files, from the finished `runs`; `missing`: the folders of runs that failed."""
    summary = summarize(study, arms, runs, baselines)
    if missing:
        summary["missing"] = list(missing)
    if not study.no_test:
        export_best(study, summary)
    out = lambda name: os.path.join(study.output_dir, name)  # noqa: E731
    # Every text first, then the files: a summary that cannot be made leaves the earlier files as
    # they were, never a summary.json that disagrees with summary.md.
    texts = {"summary.json": json.dumps(json_safe(summary), indent=2) + "\n", "summary.md": markdown(study, summary)}
    if transfer_matrix(summary)[2]:
        texts["transfer_matrix.md"] = transfer_matrix_markdown(summary)
    for name, text in texts.items():
        with atomic_write(out(name)) as f:
            f.write(text)
    for name in ("summary.md", "transfer_matrix.md"):
        if name in texts:
            print(texts[name])
    written = list(texts)
    pictures = {"summary.png": plot(summary, out("summary.png"))}
    if "transfer_matrix.md" in written:
        pictures["transfer_matrix.png"] = plot_transfer_matrix(summary, out("transfer_matrix.png"))
    written += [name for name, drawn in pictures.items() if drawn]
    missing_matplotlib = any(drawn is False for drawn in pictures.values())
    note = " (no pictures: matplotlib is not installed; pip install matplotlib)" if missing_matplotlib else ""
    print(f"wrote {', '.join(written)} in {study.output_dir}{note}")
    return summary
