"""Tensor parallelism across 2 CPU processes (torchrun + gloo) gives the single-process logits; the constructors ask
for the model-parallel group (`model_parallel_size()`) and never set it up themselves."""
import subprocess
import sys
from pathlib import Path

import torch

from llama_lit.config import ModelArgs
from llama_lit.model import Transformer
from llama_lit.parallel import model_parallel_size

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


def test_constructors_ask_for_the_group_and_do_not_set_it_up():
    "In a fresh process, building before init_model_parallel() is a RuntimeError that names it, and makes no group."
    code = ("import torch.distributed as dist\n"
            "from llama_lit.config import ModelArgs\n"
            "from llama_lit.attention import Attention\n"
            "from llama_lit.model import FeedForward, Transformer\n"
            "args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=16, multiple_of=32, max_seq_len=8, max_batch_size=1)\n"
            "for make in (lambda: Transformer(args), lambda: Attention(args), lambda: FeedForward(32, 128, 32, None)):\n"
            "    try: make(); print('built')\n"
            "    except RuntimeError as e: print('RuntimeError:', e)\n"
            "print('initialized:', dist.is_initialized())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    *errors, last = r.stdout.splitlines()
    assert len(errors) == 3 and all(e.startswith("RuntimeError:") and "init_model_parallel()" in e and "Llama.build" in e
                                    for e in errors), r.stdout
    assert last == "initialized: False"


def test_the_session_has_one_process_group():
    "conftest's session fixture set the group up once, so tests build modules directly."
    assert model_parallel_size() == 1
    assert Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=16, multiple_of=32, max_seq_len=8,
                                 max_batch_size=1)).layers[0].attention.n_local_heads == 2
