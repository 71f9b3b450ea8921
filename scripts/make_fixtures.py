"""Rebuild tests/fixtures/glue* from a real GLUE folder (rows are copied verbatim, never edited).

    python scripts/make_fixtures.py /path/to/glue_data     # or: GLUE_DIR=/path/to/glue_data python ...

The GLUE folder is the one tests/fixtures/README.md describes: the official files, plus the
PTB-tokenized copies under MNLI/tokenized/ and SNLI/tokenized/ that some fixtures come from.

Each fixture file is a seeded random sample of one real file, written in source order with the
source's header line. Labeled train/dev files are stratified so that every label occurs and one
label (the source file's most frequent) is a strict majority, which keeps majority-baseline tests
deterministic. Files built from the same source (QQP train/dev/test, SNLI train/dev) share no rows.
"""
import collections
import json
import os
import random
import sys
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 40
COUNTS = {2: (23, 17), 3: (15, 13, 12)}  # per-label row counts, most frequent label first


def read(path, header):
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return (lines[0] if header else None), lines[1:] if header else lines


def field(line, col):
    return line.split(b"\t")[col].strip().decode()


class Builder:
    def __init__(self, glue_dir, out_root):
        self.glue_dir, self.out_root = glue_dir, out_root
        self.used = collections.defaultdict(set)  # source path -> row positions already taken
        self.notes = []

    def make(self, out, src, header=True, label=None, n=N, keep=None, columns=None, counts=None,
             note=""):
        """Write `out` with rows of `src`; `label`: label column (stratify); `keep`: row filter;
        `columns`: project each row onto these columns (QQP test layout)."""
        src_path = os.path.join(self.glue_dir, src)
        head, rows = read(src_path, header)
        rng = random.Random(zlib.crc32(out.encode()))  # stable per-file seed
        pool = [i for i, r in enumerate(rows)
                if i not in self.used[src] and (keep is None or keep(r))]
        if label is None:
            picked = rng.sample(pool, n)
        else:
            by_label = collections.defaultdict(list)
            for i in pool:
                by_label[field(rows[i], label)].append(i)
            full = collections.Counter(field(r, label) for r in rows)
            order = sorted(by_label, key=lambda k: (-full[k], k))
            counts = counts or COUNTS[len(order)]
            picked = [i for k, c in zip(order, counts) for i in rng.sample(by_label[k], c)]
        picked.sort()
        self.used[src].update(picked)
        lines = [rows[i] for i in picked]
        if columns is not None:
            project = lambda l: b"\t".join(l.split(b"\t")[c] for c in columns)
            head = b"id\tquestion1\tquestion2"
            lines = [project(l) for l in lines]
        path = os.path.join(self.out_root, out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"".join(l + b"\n" for l in ([head] if head is not None else []) + lines))
        dist = ""
        if label is not None:
            c = collections.Counter(field(rows[i], label) for i in picked)
            dist = ", ".join(f"{k}: {v}" for k, v in c.most_common())
        self.notes.append((out, len(lines), src, dist, note))


def official(line):
    """MNLI/QQP/QNLI train rows below index 10,000,000 are verbatim GLUE rows (all columns filled)."""
    return int(line.split(b"\t")[0]) < 10_000_000


def build_glue(b):
    for folder, label, header in [("CoLA", 1, False), ("SST-2", 1, True), ("MRPC", 0, True),
                                  ("RTE", 3, True), ("WNLI", 3, True)]:
        for split in ("train", "dev"):
            b.make(f"{folder}/{split}.tsv", f"{folder}/{split}.tsv", header=header, label=label)
        b.make(f"{folder}/test.tsv", f"{folder}/test.tsv")
    for split in ("train", "dev", "test"):
        b.make(f"STS-B/{split}.tsv", f"STS-B/{split}.tsv")
    b.make("QNLI/train.tsv", "QNLI/train.tsv", label=3, keep=official, note="official-index rows only")
    b.make("QNLI/dev.tsv", "QNLI/dev.tsv", label=3)
    b.make("QNLI/test.tsv", "QNLI/test.tsv")
    # QQP: only a train subset exists, so dev and test are built from other real train rows.
    b.make("QQP/train.tsv", "QQP/train.tsv", label=5, keep=official, note="official-index rows only")
    b.make("QQP/dev.tsv", "QQP/train.tsv", label=5, keep=official,
           note="other real QQP **train** rows, same layout as train")
    b.make("QQP/test.tsv", "QQP/train.tsv", keep=official, columns=(0, 3, 4),
           note="other real QQP **train** rows, cut to the official test layout `id, question1, question2` "
                "(the id is the row's train id)")
    b.make("MNLI/train.tsv", "MNLI/train.tsv", label=-1, keep=official, note="official-index rows only")
    b.make("MNLI/dev_matched.tsv", "MNLI/dev_matched.tsv", label=-1, note="raw text")
    b.make("MNLI/dev_mismatched.tsv", "MNLI/tokenized/dev_mismatched.tsv", label=-1, note="tokenized text")
    for split in ("test_matched", "test_mismatched"):
        b.make(f"MNLI/{split}.tsv", f"MNLI/tokenized/{split}.tsv",
               note="tokenized text; the index column is empty in the source")
    # SNLI: no train file exists, so train comes from other SNLI dev rows.
    b.make("SNLI/dev.tsv", "SNLI/dev.tsv", label=-1)
    b.make("SNLI/train.tsv", "SNLI/dev.tsv", label=-1, note="other real SNLI **dev** rows (disjoint from dev.tsv)")
    b.make("SNLI/test.tsv", "SNLI/tokenized/test.tsv", label=-1, note="tokenized text")
    b.make("diagnostic/diagnostic.tsv", "diagnostic/diagnostic.tsv")


def build_learn(b):
    b.make("SST-2/train.tsv", "SST-2/train.tsv", label=1, n=600, counts=(310, 290), note="near-balanced")
    b.make("SST-2/dev.tsv", "SST-2/dev.tsv", n=200)


def build_choices(glue_dir, out_dir, n_train=600, n_dev=200):
    """A multiple-choice task from MNLI dev_matched: a premise, its three hypotheses (one per label)
    in a seeded random order, and the number of the entailed one as the label (JSON Lines)."""
    _, lines = read(os.path.join(glue_dir, "MNLI", "dev_matched.tsv"), header=True)
    groups = collections.defaultdict(list)
    for line in lines:
        groups[field(line, 8)].append((field(line, 9), field(line, -1)))
    complete = [(premise, rows) for premise, rows in groups.items()
                if sorted(label for _, label in rows) == ["contradiction", "entailment", "neutral"]]
    rng = random.Random(zlib.crc32(b"MNLI-choice"))
    picked = rng.sample(complete, n_train + n_dev)
    os.makedirs(out_dir, exist_ok=True)
    for split, rows in (("train", picked[:n_train]), ("dev", picked[n_train:])):
        with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8", newline="\n") as f:
            for premise, hypotheses in rows:
                hypotheses = rng.sample(hypotheses, 3)
                label = [label for _, label in hypotheses].index("entailment")
                f.write(json.dumps({"premise": premise, "hypotheses": [h for h, _ in hypotheses], "label": label}) + "\n")
    print(f"glue_learn/MNLI-choice: {n_train} train, {n_dev} dev questions from {len(complete)} complete premises")


def main(glue_dir):
    for name, build in [("glue", build_glue), ("glue_learn", build_learn)]:
        b = Builder(glue_dir, os.path.join(REPO, "tests", "fixtures", name))
        build(b)
        for out, n, src, dist, note in b.notes:
            print(f"{name}/{out}\t{n}\t{src}\t{dist}\t{note}")
    build_choices(glue_dir, os.path.join(REPO, "tests", "fixtures", "glue_learn", "MNLI-choice"))


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("GLUE_DIR")
    if not source:
        sys.exit("usage: python scripts/make_fixtures.py GLUE_DIR (or set GLUE_DIR): the GLUE folder to sample from")
    main(source)
