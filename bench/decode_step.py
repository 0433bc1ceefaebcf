"""The whole decode step in C++ (bench/step/step.cpp) against the package's eager step, on the same built model.

An experiment for issue 19 ("a step with no Python"): `Llama.build` of a GGUF file (default: the shipped SmolLM2 Q4_1)
with chapter 11's kernels; bench/step/step.cpp is compiled as a library of its own next to them (its ops call the
kernels through torch's dispatcher). Both steps run over the same model and caches, in turn; the table gives the
median ms per decode step over `--rounds` rounds of `--steps` steps, and how many greedy tokens of the two agree.

    .venv/bin/python bench/decode_step.py [--file F.gguf] [--threads 2] [--rounds 5] [--steps 64] [--greedy 32]
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from llama_lit import Llama
from llama_lit.assets import smollm2_path
from llama_lit.kernels import KernelLinear, load_kernels
from llama_lit.kquants import KQuantLinear

HERE = Path(__file__).resolve().parent


def load_step_library():
    "Compile and load bench/step/step.cpp (after the package's kernels, whose ops it calls)."
    from torch.utils.cpp_extension import load
    load_kernels()
    load("llama_lit_step_bench", sources=[str(HERE / "step" / "step.cpp")], extra_cflags=["-O3", "-mavx2", "-mfma"],
         is_python_module=False, verbose=False)


def kernel_args(m) -> tuple[str, list]:
    "The registered kernel of a CPU-kernel module and its weight tensors, in the op's argument order."
    if isinstance(m, KernelLinear):
        wrapper, names = m.KINDS[m.kind]
        return wrapper.__name__, [getattr(m, n) for n in names]
    if isinstance(m, KQuantLinear): return f"{m.kind}_linear", [m.blocks]
    raise ValueError(f"{type(m).__name__} has no CPU kernel: build with the kernels (Llama.build(..., kernels=True))")


def step_lists(f) -> dict:
    "Everything decode_step reads, as the flat lists its schema takes, from a FastForward `f`."
    out = dict(weights=[], ops=[], n_args=[], slots=[], norms=[], caches=[])
    def slot(mods):
        for m in mods:
            op, ts = kernel_args(m)
            out["ops"].append(op); out["n_args"].append(len(ts)); out["weights"].extend(ts)
        out["slots"].append(len(mods))
    for layer, fast, (kc, vc) in zip(f.model.layers, f.linears, f.caches):
        a, ff = layer.attention, layer.feed_forward
        slot([fast["wqkv"]] if "wqkv" in fast else [a.wq, a.wk, a.wv])
        slot([fast["wo"] if "wo" in fast else a.wo])
        slot([fast["w13"]] if "w13" in fast else [ff.w1, ff.w3])
        slot([fast["w2"] if "w2" in fast else ff.w2])
        out["norms"] += [layer.attention_norm.weight, layer.ffn_norm.weight]
        out["caches"] += [kc, vc]
    slot([f.output if f.output is not None else f.model.output])
    out["norms"].append(f.model.norm.weight)
    return out


def make_step(f):
    "A function (tokens (bsz, 1), pos) -> logits (bsz, 1, vocab) running the C++ step over f's model and caches."
    lists, p = step_lists(f), f.model.params
    def step(tokens, pos):
        h = f._embed(tokens).view(tokens.shape[0], -1)                       # (bsz, dim)
        return torch.ops.llama_lit.decode_step(h, pos, lists["weights"], lists["ops"], lists["n_args"],
                                               lists["slots"], lists["norms"], lists["caches"], f.cos, f.sin,
                                               p.n_heads, p.n_kv_heads, p.norm_eps)[:, None]
    return step


def greedy(f, fn, prompt, n):
    "n greedy tokens after `prompt` (1, S): the prompt through f, each next token through fn at its position."
    t = f(prompt, 0)[:, -1].argmax(-1, keepdim=True)               # (1, 1)
    out = [int(t)]
    for i in range(n - 1):
        t = fn(t, prompt.shape[1] + i)[:, -1].argmax(-1, keepdim=True)
        out.append(int(t))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=None, help="a GGUF file (default: the shipped SmolLM2 Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--greedy", type=int, default=32)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load_step_library()
    llm = Llama.build(a.file or str(smollm2_path()), max_seq_len=512, max_batch_size=1)
    f = llm.forward
    step = make_step(f)
    prompt = torch.randint(0, 1000, (1, 46), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        runs = {"eager (Llama.build's default)": f, "C++ decode_step": step}
        tokens = {k: greedy(f, fn, prompt, a.greedy) for k, fn in runs.items()}
        times = {k: [] for k in runs}
        f(prompt, 0)
        for r in range(a.rounds):                                            # in turn: the same load on both
            for k, fn in runs.items():
                t = time.perf_counter()
                for i in range(a.steps): fn(prompt[:, :1], 46 + i)
                times[k].append((time.perf_counter() - t) / a.steps * 1e3)
    same = sum(x == y for x, y in zip(*tokens.values()))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; {a.threads} threads; "
          f"{Path(a.file or smollm2_path()).name}; median of {a.rounds} rounds of {a.steps} steps")
    print(f"{'decode step':32} {'ms/step':>8} {'tok/s':>7}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items(): print(f"{k:32} {v:8.2f} {1e3 / v:7.1f}")
    print(f"greedy tokens equal: {same}/{a.greedy}")
    eager, cpp = med.values()
    print(f"C++ step speed-up over eager: {eager / cpp:.2f}")


if __name__ == "__main__":
    main()
