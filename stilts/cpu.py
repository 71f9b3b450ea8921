"""A warning when --bf16 runs on a CPU without bfloat16 instructions.

Only some CPUs multiply bf16 matrices in hardware: on x86 those with AVX512-BF16 or AMX-BF16, on
aarch64 those with the BF16 extension. Elsewhere a bf16 matmul can run hundreds of times slower
than an fp32 one, and a --bf16 training run would be that much slower without a word. The warning
names the missing instructions and gives both speeds, measured on the spot; the run goes on.
"""
import logging
import time

import torch

logger = logging.getLogger(__name__)

# The /proc/cpuinfo line listing a CPU's features -> (any of these flags means fast bf16, their names).
FAST_BF16 = {
    "flags": ({"avx512_bf16", "amx_bf16"}, "AVX512-BF16 or AMX-BF16"),  # x86
    "Features": ({"bf16"}, "the Arm BF16 extension"),                   # aarch64
}


def read_cpuinfo(path="/proc/cpuinfo"):
    """The CPU description Linux gives, or "" elsewhere (no warning rather than a wrong one)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def missing_bf16(cpuinfo):
    """The names of the bf16 instructions a CPU lacks, from its /proc/cpuinfo text; None when it
    has them or when the text lists no features we know."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in FAST_BF16:
            fast, names = FAST_BF16[key.strip()]
            return None if fast & set(value.split()) else names
    return None


def matmul_gflops(dtype, n=256, budget_s=0.05):
    """GFLOP/s of the fastest n x n by n x n CPU matmul among those run in about budget_s.

    The first call, which may set up kernels, counts too: where bf16 crawls (one 256^3 matmul takes
    0.1 s at 0.3 GFLOP/s) a single slow call is all there is time for, and it is slow anyway.
    """
    generator = torch.Generator().manual_seed(0)  # not the global one: a run's --seed draws stay the same
    a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s:
        began = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - began)
    return 2 * n ** 3 / best / 1e9


def warn_if_slow_bf16(device, precision):
    """Log one warning when bf16 runs on a CPU that lacks bf16 instructions, with the measured cost."""
    if precision != "bf16" or device.type != "cpu":
        return
    missing = missing_bf16(read_cpuinfo())
    if missing is None:
        return
    bf16, fp32 = matmul_gflops(torch.bfloat16), matmul_gflops(torch.float32)
    logger.warning(f"--bf16 on a CPU without {missing}: a bf16 matrix multiplication takes {fp32 / bf16:.1f}x "
                   f"the time of an fp32 one here ({bf16:.1f} vs {fp32:.1f} GFLOP/s); drop --bf16 to run in fp32")
