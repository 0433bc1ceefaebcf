"""Tensor parallelism across 2 CPU processes (torchrun + gloo) gives the single-process logits."""
import subprocess
import sys
from pathlib import Path

import torch

from llama_lit.attention import ModelArgs
from llama_lit.model import Transformer

HERE = Path(__file__).parent


def run_torchrun(script: Path, *argv: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    "Run `script` under torchrun with `nproc` local processes; a hang is cut off by `timeout`."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(script), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_two_process_logits_match_single_process(tmp_path):
    out = tmp_path / "tp.pt"
    r = run_torchrun(HERE / "tp_check.py", str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    res = torch.load(out)
    shards = res["shards"]
    assert shards["model_parallel_size"] == 2
    assert shards["wq_local_rows"] == shards["wq_full_rows"] // 2          # each rank holds half the heads
    assert shards["tok_embeddings_local_dim"] == res["args"]["dim"] // 2   # ParallelEmbedding splits the dim
    torch.manual_seed(res["seed"])
    single = Transformer(ModelArgs(**res["args"]))
    with torch.inference_mode():
        ref = single(res["tokens"], 0)
    assert (res["logits"] - ref).abs().max().item() <= 1e-5
    assert (res["cached_logits"] - ref).abs().max().item() <= 1e-5
    assert torch.equal(res["logits"].argmax(-1), ref.argmax(-1))
