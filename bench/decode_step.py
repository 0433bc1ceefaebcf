"""The whole decode step in C++ (chapter 11c, `llama_lit.step`) against the eager step, on the same built model.

`Llama.build` of a GGUF file (default: the shipped SmolLM2 Q4_1) with chapter 11's kernels gives a FastForward whose
`step` is chapter 11c's `CppStep`; with `f.step = None` the same forward runs chapter 07's lean step over the same
kernels. Both run over the same model and caches, in turn; the table gives the median ms per decode step over
`--rounds` rounds of `--steps` steps, and how many greedy tokens of the two agree.

    .venv/bin/python bench/decode_step.py [--file F.gguf] [--threads 2] [--rounds 5] [--steps 64] [--greedy 32]
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from llama_lit import Llama
from llama_lit.assets import smollm2_path

PROMPT = ("The river rises in the hills above the town, runs north through the old market, and meets the sea at a "
          "harbour that has been rebuilt three times since the war. Ask anyone who lives there what they remember most "
          "about it, and they will tell you")


def greedy(f, fn, prompt, n):
    """n greedy tokens after `prompt` (1, S): the prompt through f, each next token through fn at its position; and
    the logits each token was chosen from."""
    logits = [f(prompt, 0)[0, -1]]
    out = [int(logits[-1].argmax())]
    for i in range(n - 1):
        logits.append(fn(torch.tensor([[out[-1]]]), prompt.shape[1] + i)[0, -1])
        out.append(int(logits[-1].argmax()))
    return out, logits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=None, help="a GGUF file (default: the shipped SmolLM2 Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--greedy", type=int, default=32)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    llm = Llama.build(a.file or str(smollm2_path()), max_seq_len=512, max_batch_size=1)
    f, cpp = llm.forward, llm.forward.step
    if cpp is None: raise SystemExit("this build has no C++ step (the CPU kernels are off or cannot run the model)")
    def eager(tokens, pos):
        f.step = None
        try: return f(tokens, pos)
        finally: f.step = cpp
    ids = llm.tokenizer.encode(PROMPT, bos=True, eos=False)[:46]
    prompt = torch.tensor([ids])                                             # (1, 46): real text, not random ids
    with torch.inference_mode():
        runs = {"eager (chapter 07's lean step)": eager, "C++ step (chapter 11c)": f}
        tokens = {k: greedy(f, fn, prompt, a.greedy) for k, fn in runs.items()}
        times = {k: [] for k in runs}
        f(prompt, 0)
        for r in range(a.rounds):                                            # in turn: the same load on both
            for k, fn in runs.items():
                t = time.perf_counter()
                for i in range(a.steps): fn(prompt[:, :1], prompt.shape[1] + i)
                times[k].append((time.perf_counter() - t) / a.steps * 1e3)
    (a_tok, a_logits), (b_tok, _) = tokens.values()
    same = next((i for i, (x, y) in enumerate(zip(a_tok, b_tok)) if x != y), len(a_tok))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; {a.threads} threads; "
          f"{Path(a.file or smollm2_path()).name}; median of {a.rounds} rounds of {a.steps} steps")
    print(f"{'decode step':32} {'ms/step':>8} {'tok/s':>7}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items(): print(f"{k:32} {v:8.2f} {1e3 / v:7.1f}")
    if same == len(a_tok): print(f"greedy tokens equal: {same}/{a.greedy}")
    else:
        top = a_logits[same].topk(2).values.tolist()
        print(f"greedy tokens equal: the first {same} of {a.greedy}; at the next, the eager step's top two logits "
              f"are {top[0]:.3f} and {top[1]:.3f}")
    eager, cpp = med.values()
    print(f"C++ step speed-up over eager: {eager / cpp:.2f}")


if __name__ == "__main__":
    main()
