"""Rebuild demo/glue_data/ from a GLUE data folder (the one described in its README.md).

    python demo/make_glue_data.py /path/to/glue_data

RTE is copied whole. MNLI gets random rows, kept in file order with the header: 3000 of train.tsv,
1000 of dev_matched.tsv and 1000 of tokenized/dev_mismatched.tsv (written to tokenized/, as in the
source, because its text is PTB-tokenized).
"""
import os
import shutil
import sys

import numpy as np

SAMPLES = {"train.tsv": 3000, "dev_matched.tsv": 1000, "tokenized/dev_mismatched.tsv": 1000}
SEED = 0


def sample_rows(src, dest, n, rng):
    with open(src, encoding="utf-8", newline="") as f:
        header, *rows = f.readlines()
    keep = np.sort(rng.choice(len(rows), n, replace=False))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "w", encoding="utf-8", newline="") as f:
        f.write(header)
        f.writelines(rows[i] for i in keep)


def main(glue_dir):
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "glue_data")
    rng = np.random.default_rng(SEED)
    for name, n in SAMPLES.items():
        sample_rows(os.path.join(glue_dir, "MNLI", name), os.path.join(out, "MNLI", name), n, rng)
    os.makedirs(os.path.join(out, "RTE"), exist_ok=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        shutil.copyfile(os.path.join(glue_dir, "RTE", name), os.path.join(out, "RTE", name))


if __name__ == "__main__":
    main(sys.argv[1])
