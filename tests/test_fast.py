"""The fast path (chapter 07) generates the same tokens as the reference path of chapters 03-05: eager and compiled,
through Llama.build's default, and the benchmark script runs end to end (tiny model: a smoke test, not a timing)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_lit.attention import ModelArgs
from llama_lit.fast import FastForward
from llama_lit.generation import Llama
from llama_lit.model import Transformer

ROOT = Path(__file__).resolve().parents[1]


class NoStop:
    eos_id, pad_id, stop_tokens = -1, -1, []


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    args = ModelArgs(dim=128, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=512, multiple_of=32,
                     max_batch_size=4, max_seq_len=64)
    return Transformer(args).eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in (5, 9, 14)]


def test_compiled_decode_gives_the_same_tokens(model):
    ref = Llama(model, NoStop()).generate(prompts(), 24, temperature=0)[0]
    out = Llama(model, NoStop(), forward=FastForward(model, compile=True)).generate(prompts(), 24, temperature=0)[0]
    assert out == ref


def test_build_uses_the_fast_path_and_agrees(tmp_path):
    fast, ref = Llama.build(), Llama.build(fast=False)               # the shipped Shakespeare model
    assert isinstance(fast.forward, FastForward) and ref.forward is ref.model
    a = fast.text_completion(["ROMEO:", "JULIET: O"], temperature=0, max_gen_len=40)
    b = ref.text_completion(["ROMEO:", "JULIET: O"], temperature=0, max_gen_len=40)
    assert [x["generation"] for x in a] == [x["generation"] for x in b]
    lp = fast.text_completion(["ROMEO:"], temperature=0, max_gen_len=8, logprobs=True)   # log-probs: reference forward
    assert len(lp[0]["logprobs"]) == len(lp[0]["tokens"]) > 0


def test_benchmark_script_runs_and_ends_with_the_ratio():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--tiny", "--runs", "1", "--new-tokens", "4",
                        "--batches", "1,2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert "generated the same 4 tokens" in r.stdout
    assert lines[-1].startswith("decode ratio vs transformers: ") and float(lines[-1].split(": ")[1]) > 0


def test_benchmark_refuses_bad_arguments():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--batches", "8"], capture_output=True, text=True)
    assert r.returncode == 2 and "must include 1" in r.stderr
