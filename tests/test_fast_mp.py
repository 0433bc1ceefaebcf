"""FastForward on 2 tensor-parallel processes (torchrun + gloo): the same greedy tokens as on 1 process, compiled as
eager, and the compiled decode step is one graph (functional collectives; fairscale's autograd-Function collectives
broke it at every collective). Each case starts 2 processes (~5 s) and compiles one decode step (~10 s on 2 cores)."""
import os

import pytest
import torch

from conftest import HERE, torchrun
import fast_mp_check                                                   # tests/fast_mp_check.py: what each rank runs

from llama_lit.fast import FastForward


@pytest.mark.parametrize("name,embedding", [("split-dim", "ParallelEmbedding"), ("vocab-split", "VocabParallelEmbedding")])
def test_two_processes_compile_into_one_graph_and_match_one_process(tmp_path, name, embedding):
    out = tmp_path / "res"
    r = torchrun([HERE / "fast_mp_check.py", out, name], timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    res = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    model = fast_mp_check.build(name)                                   # the same seeded model, one process
    single = fast_mp_check.greedy(model)
    with torch.inference_mode():
        logits = FastForward(model)(torch.tensor(fast_mp_check.PROMPTS[:1]), 0)   # (1, 1, vocab)
    for rr in res:
        assert rr["embedding"] == embedding
        assert rr["reference"] == rr["eager"] == rr["compiled"] == single
        assert (rr["logits"] - logits).abs().max().item() <= 1e-5
        assert rr["graph_breaks"] == 0, rr["break_reasons"]
        assert rr["unique_graphs"] == 1 and rr["frames_ok"] == 1       # max_seq_len 32: one span, one graph, no recompile
