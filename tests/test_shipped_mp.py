"""The model shipped in the package on several processes (torchrun, gloo on CPU): it splits over 1, 2 and 4 processes,
gives the single-process greedy text on each, and the README's `torchrun --nproc_per_node 2 -m llama_lit generate`
runs it with no flag but the prompt."""
import json
import subprocess
import sys

import pytest

from conftest import torchrun
from llama_lit.config import ModelArgs
from llama_lit.checkpoint import check_parallel_sizes
from llama_lit.assets import default_checkpoint_dir

PROMPT, N_NEW = "ROMEO:", 32
GREEDY = ["-m", "llama_lit", "generate", PROMPT, "--temperature", "0", "--max-gen-len", str(N_NEW)]
SEP = "=" * 40 + "\n"                                      # the CLI's line after each completion


def shipped_args() -> ModelArgs:
    return ModelArgs.from_params(json.loads((default_checkpoint_dir() / "params.json").read_text()))


@pytest.mark.parametrize("nproc", [1, 2, 4])
def test_the_shipped_shape_splits(nproc):
    check_parallel_sizes(shipped_args(), nproc)               # raises ValueError naming the size that does not divide


def first_difference(a: str, b: str) -> str:
    "Where two outputs part, for the failure message."
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"they differ from character {i}: {a[i:i + 40]!r} vs {b[i:i + 40]!r}"


@pytest.fixture(scope="module")
def one_process() -> str:
    r = subprocess.run([sys.executable, *GREEDY], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.startswith(PROMPT) and r.stdout.endswith(SEP) and len(r.stdout) > len(PROMPT + "\n" + SEP) + 20
    return r.stdout


@pytest.mark.parametrize("nproc", [1, 2, 4])
def test_same_greedy_text_on_n_processes(one_process, nproc):
    r = torchrun(GREEDY, nproc=nproc, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count(SEP) == 1                            # printed once, by rank 0
    assert r.stdout == one_process, first_difference(r.stdout, one_process)


def test_readme_command_two_processes_no_flags():
    "`torchrun --nproc_per_node 2 -m llama_lit generate \"ROMEO:\"`: default sampling, the seed shared by the ranks."
    r = torchrun(["-m", "llama_lit", "generate", PROMPT], nproc=2, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    text = r.stdout.removesuffix("\n" + SEP)
    assert r.stdout.count(SEP) == 1 and text.startswith(PROMPT) and len(text.split()) > 5, r.stdout
