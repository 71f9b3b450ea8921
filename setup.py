import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    with open(os.path.join(HERE, name)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


with open(os.path.join(HERE, "stilts", "__init__.py")) as f:
    version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

DATA_PACKAGES = {"stilts.cache": "cache", "stilts.configs": "configs"}

setup(
    name="stilts",
    version=version,
    description="Supplementary Training on Intermediate Labeled-data Tasks (STILTs) for BERT-family encoders",
    license="Apache-2.0",
    # The data files stay at the repository root (cache/, configs/) for clone users; the wheel carries
    # them inside the package as stilts/cache/ and stilts/configs/ (see stilts/resources.py).
    packages=find_packages(include=["stilts", "stilts.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={
        "stilts.cache": ["bert_metadata/*/bert_config.json", "bert_metadata/*/vocab.txt", "submission_template/*.tsv"],
        "stilts.configs": ["*.json"],
    },
    python_requires=">=3.10",  # torch 2.13
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "dev": read_requirements("requirements-dev.txt"),
        "plot": ["matplotlib"],
        "bench": ["accelerate"],  # transformers' Trainer, used as the benchmark's reference
        "tensorboard": ["tensorboard"],  # --report_to tensorboard
        "datasets": ["datasets"],  # task files that read Hugging Face datasets, and parquet files (pyarrow)
        "submitit": ["submitit"],  # stilts-run --launcher submitit (SLURM)
        "ray": ["ray"],  # stilts-run --launcher ray
    },
    entry_points={
        "console_scripts": [
            "stilts-train=stilts.cli.train:main",
            "stilts-evaluate=stilts.cli.evaluate:main",
            "stilts-format-for-glue=stilts.cli.format_for_glue:main",
            "stilts-make-submission=stilts.cli.make_submission:main",
            "stilts-run=stilts.cli.run:main",
            "stilts-download-glue=stilts.cli.download_glue:main",
            "stilts-rank=stilts.cli.rank:main",
            "stilts-export=stilts.cli.export:main",
        ]
    },
)
