"""Shared helpers: random Meta-format checkpoints written by the project's own code, and torchrun launches."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llama_lit.config import ModelArgs
from llama_lit.checkpoint import save_checkpoint
from llama_lit.model import Transformer
from llama_lit.parallel import init_model_parallel
from llama_lit.tokenizer import Tokenizer, default_tokenizer_path

HERE = Path(__file__).parent

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, norm_eps=1e-5, rope_theta=10000.0, context_length=64)


def write_random_checkpoint(out: Path, mp: int = 1, seed: int = 0, **overrides) -> Path:
    "A random LLaMA (vocabulary of the shipped tokenizer) saved in Meta's format with `mp` shards."
    params = {**TINY, "vocab_size": Tokenizer().n_words, **overrides}
    init_model_parallel()
    torch.manual_seed(seed)
    sd = Transformer(ModelArgs(**params, max_batch_size=1, max_seq_len=8)).state_dict()
    # larger embeddings/head than the 0.02 init, so greedy choices are not near-ties
    sd = {k: v * 8 if k in ("output.weight", "tok_embeddings.weight") else v for k, v in sd.items()}
    return save_checkpoint(out, params, sd, mp=mp, tokenizer_path=default_tokenizer_path())


def torchrun(args, nproc: int = 2, timeout: int = 240, **kw) -> subprocess.CompletedProcess:
    "Run `python -m torch.distributed.run --nproc_per_node nproc --standalone *args`; a hang is cut off by `timeout`."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session", autouse=True)
def model_parallel_group() -> int:
    "One process's model-parallel group for the whole session: constructors ask for it, entry points set it up."
    return init_model_parallel()


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    "The same random model saved with 1 and with 2 shards."
    d = tmp_path_factory.mktemp("ckpt")
    return {1: write_random_checkpoint(d / "mp1", mp=1), 2: write_random_checkpoint(d / "mp2", mp=2)}


class Allocations(TorchDispatchMode):
    "Bytes of new tensors made by factory ops (empty, zeros, ...), per device type."
    FACTORIES = ("empty", "empty_strided", "zeros", "ones", "full", "new_empty", "new_zeros", "new_ones", "new_full",
                 "empty_like", "zeros_like", "ones_like", "full_like", "randn", "rand", "normal", "arange")

    def __init__(self):
        super().__init__()
        self.bytes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in self.FACTORIES and isinstance(out, torch.Tensor):
            self.bytes[out.device.type] = self.bytes.get(out.device.type, 0) + out.numel() * out.element_size()
        return out
