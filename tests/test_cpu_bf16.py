"""--bf16 on a CPU without bf16 instructions: one warning line with the measured cost, never a refusal.

The CPU is faked by replacing stilts.cpu.read_cpuinfo; the matmul timings are real.
"""
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import FIXTURES
from stilts import cpu
from stilts.distributed import DistContext
from stilts.modeling import ModelSource, build_model
from stilts.tasks import get_task
from stilts.settings import TrainSettings
from stilts.trainer import Trainer

X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma {}\nvmx flags\t: ept\nbugs\t\t:\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve {}\nCPU implementer\t: 0x41\n"
NO_BF16_X86 = X86.format("avx512f avx512bw avx512_vnni")
WARNING = "--bf16 on a CPU without AVX512-BF16 or AMX-BF16"


@pytest.mark.parametrize("cpuinfo, missing", [
    (X86.format("avx512f avx512_bf16"), None),
    (X86.format("amx_tile amx_bf16 amx_int8"), None),
    (NO_BF16_X86, "AVX512-BF16 or AMX-BF16"),
    (X86.format(""), "AVX512-BF16 or AMX-BF16"),
    (ARM.format("bf16 i8mm"), None),
    (ARM.format("i8mm"), "the Arm BF16 extension"),
    ("", None),
    ("processor 0: version = FF\nfeatures\t: esan3 zarch stfle msa\n", None),  # s390x: not a platform we know
], ids=["avx512_bf16", "amx_bf16", "avx512f only", "no avx512", "arm bf16", "arm without", "empty", "s390x"])
def test_missing_bf16_from_cpuinfo(cpuinfo, missing):
    assert cpu.missing_bf16(cpuinfo) == missing


def test_matmul_timing_is_quick():
    start = time.perf_counter()
    rates = [cpu.matmul_gflops(dtype) for dtype in (torch.bfloat16, torch.float32)]
    assert time.perf_counter() - start < 0.5 and all(rate > 0 for rate in rates)


def warnings_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("stilts") and r.levelno == logging.WARNING]


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: NO_BF16_X86)


@pytest.mark.parametrize("precision, expected", [("bf16", 1), ("fp32", 0)])
def test_trainer_warns_once_for_bf16_only(precision, expected, no_bf16_cpu, tiny_bert_dir, tmp_path, caplog):
    rte = get_task("rte")
    model = build_model(ModelSource(tiny_bert_dir).config(), rte)
    Trainer(model, rte, TrainSettings(bf16=precision == "bf16", seed=0), DistContext(), str(tmp_path), run_args={},
            verbose=False)
    logged = warnings_logged(caplog)
    assert len(logged) == expected, logged
    if expected:
        assert logged[0].startswith(WARNING) and "x the time of an fp32 one here" in logged[0]
        assert "drop --bf16 to run in fp32" in logged[0] and "\n" not in logged[0]


def test_no_warning_off_the_cpu(no_bf16_cpu, caplog):
    cpu.warn_if_slow_bf16(torch.device("cuda"), "bf16")
    assert warnings_logged(caplog) == []


def test_train_cli_prints_the_line_with_not_verbose_and_still_runs(tiny_bert_dir, tmp_path):
    """A real process, so that the line is seen where a user sees it: stderr, under train.py's logging."""
    fake_cpu = f"import sys, stilts.cpu; stilts.cpu.read_cpuinfo = lambda: {NO_BF16_X86!r}"
    args = ["--task_name", "rte", "--bert_model", tiny_bert_dir, "--output_dir", tmp_path / "out",
            "--data_dir", os.path.join(FIXTURES, "RTE"), "--do_lower_case", "--not-verbose", "--no_cuda",
            "--max_seq_length", "32", "--do_train", "--do_val", "--train_examples_number", "8",
            "--num_train_epochs", "1", "--bf16"]
    result = subprocess.run([sys.executable, "-c", f"{fake_cpu}; from stilts.cli.train import main; main()",
                             *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if WARNING in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "drop --bf16 to run in fp32" in lines[0], result.stderr
    assert (tmp_path / "out" / "val_metrics.json").exists()
