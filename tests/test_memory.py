"""Memory a GGUF build adds stays near the file's size: the matrices keep their blocks (K-quants, Q5, Q8_0 ...), the
embedding is looked up from blocks, nothing is inflated to float32 (issue 19: ≤ 1.3 × the file + the KV cache).
Measured as resident memory in a fresh process, after torch, llama_lit and the kernels are loaded."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llama_lit.kernels import kernels_available

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(dim=1024, n_layers=6, n_heads=8, n_kv_heads=4, hidden=2816, vocab=8192)   # rows multiples of 256

MEASURE = r"""
import json, sys, torch
from llama_lit import Llama
from llama_lit.kernels import load_kernels
from llama_lit.parallel import init_model_parallel
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
load_kernels(); init_model_parallel()
before = rss()
llm = Llama.build(sys.argv[1], tokenizer_path=sys.argv[2], max_seq_len=64, max_batch_size=1)
after = rss()
out = llm.generate([[1, 2, 3]], 4, temperature=0.0)[0][0]
p = llm.model.params
kv = 2 * p.n_layers * p.max_seq_len * p.n_kv_heads * (p.dim // p.n_heads) * 4
print(json.dumps(dict(added=after - before, kv=kv, n=len(out), emb=type(llm.model.tok_embeddings).__name__,
                      w2=type(llm.model.layers[0].feed_forward.w2).__name__)))
"""


def big_gguf():
    spec = importlib.util.spec_from_file_location("big_gguf", ROOT / "bench" / "big_gguf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not kernels_available(), reason="the CPU kernels do not build here")
@pytest.mark.parametrize("mix,tied", [("Q4_K_M", False), ("Q4_K_M", True), ("Q5_K", False), ("Q6_K", True),
                                      ("Q5_0", True), ("Q5_1", False), ("Q8_0", True),
                                      ("Q4_1", True), ("BF16", True)])
def test_gguf_build_adds_about_the_file(tmp_path, mix, tied):
    from llama_lit.assets import default_tokenizer_path
    mod = big_gguf()
    shape = dict(SHAPE, tied=tied)
    path = mod.write_file(tmp_path / f"m.{mix}.gguf", shape, mix=mix)
    r = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(default_tokenizer_path())], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    assert got["n"] == 4 and got["w2"] == ("KQuantLinear" if "K" in mix else "KernelLinear"), got
    assert got["emb"] == ("TiedEmbedding" if tied else "BlockEmbedding"), got
    assert got["added"] <= 1.3 * size + got["kv"], (got["added"] / 2**20, size / 2**20, got["kv"] / 2**20)
