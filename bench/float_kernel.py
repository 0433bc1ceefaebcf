"""Chapter 11's float kernel (`float_linear`) on one decode step's worth of SmolLM2-shaped matrices, per weight type
and kernel width: ms for the step's matrices and the bytes of weights read per second.

Every matrix is a distinct tensor (30 layers × fused wq|wk|wv, wo, w1|w3, w2, plus the tied output), random weights,
one activation row (a decode step), the best of `--rounds` passes, so the weights stream from memory as in a step.

    .venv/bin/python bench/float_kernel.py [--threads 2] [--rounds 7] [--dtypes f32,bf16,f16]
"""
import argparse
import time

import torch

from llama_lit.kernels import cpu_isas, load_kernels, set_kernel_isa

SHAPES = [(1728, 576), (576, 576), (3072, 576), (576, 1536)]          # (N, K) per layer: wqkv, wo, w13, w2
OUTPUT = (49152, 576)                                                  # the tied output matrix, once per step
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def step_matrices(dtype, layers: int = 30) -> list[torch.Tensor]:
    "One step's matrices as distinct tensors, in the order a step calls them."
    return [torch.randn(n, k).to(dtype) for _ in range(layers) for n, k in SHAPES] + [torch.randn(*OUTPUT).to(dtype)]


def one_step(ws, xs) -> float:
    "Seconds for every matrix once, each with its activation row."
    t = time.perf_counter()
    for w in ws: torch.ops.llama_lit.float_linear(xs[w.shape[1]], w)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dtypes", default="f32,bf16,f16")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load_kernels()
    xs = {k: torch.randn(1, k) for k in (576, 1536)}
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; {a.threads} threads; "
          f"best of {a.rounds}")
    print(f"{'width':7} {'weights':8} {'ms/step':>8} {'MB':>6} {'GB/s':>6}")
    for dt in a.dtypes.split(","):
        ws = step_matrices(DTYPES[dt])
        nbytes = sum(w.numel() * w.element_size() for w in ws)
        for isa in cpu_isas():
            set_kernel_isa(isa)
            one_step(ws, xs)
            best = min(one_step(ws, xs) for _ in range(a.rounds))
            print(f"{isa:7} {dt:8} {best * 1e3:8.2f} {nbytes / 1e6:6.0f} {nbytes / best / 1e9:6.1f}")
        del ws


if __name__ == "__main__":
    main()
