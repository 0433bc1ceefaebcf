"""Every command works from a plain install: the wheel is built, installed with its declared requirements (and the
project's pins) into a fresh virtual environment, and each command runs there from outside the source tree, so a
requirement that only the dev environment happens to have fails here."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    if os.environ.get("LLAMA_LIT_SKIP_WHEEL") == "1": pytest.skip("LLAMA_LIT_SKIP_WHEEL=1")
    d = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", d / "dist", ROOT])
    wheel = next((d / "dist").glob("llama_lit-*.whl"))
    run([sys.executable, "-m", "venv", d / "venv"])
    py = d / "venv" / "bin" / "python"
    # torch first and pinned (the CPU build); then the wheel with the requirements it declares, nothing else
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "torch==2.13.0"])
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "constraints.txt", wheel])
    return py, d


def cli(venv, *argv, **kw):
    py, d = venv
    return run([py, "-m", "llama_lit", *argv], cwd=d, **kw)


def test_installed_wheel_has_no_dev_packages(venv):
    py, _ = venv
    r = subprocess.run([py, "-c", "import transformers"], capture_output=True)
    assert r.returncode != 0                                  # the check below would prove nothing otherwise
    r = run([py, "-c", "import llama_lit, sys; print(llama_lit.__file__)"], cwd=venv[1])
    assert str(ROOT) not in r.stdout                          # the installed copy, not the source tree


def test_every_command_from_the_wheel(venv, tmp_path):
    assert "ROMEO" in cli(venv, "generate", "ROMEO:", "--max-gen-len", "8").stdout
    assert "assistant:" in cli(venv, "chat", "--max-gen-len", "8", input="Good morrow\n").stdout
    cli(venv, "demo", "--max-gen-len", "4")
    src = Path(sys.modules["llama_lit"].__file__).parent / "assets" / "shakespeare"
    cli(venv, "reshard", src, tmp_path / "mp2", "--mp", "1")
    cli(venv, "convert", "--to", "hf", tmp_path / "mp2", tmp_path / "hf")       # safetensors: a core requirement
    cli(venv, "convert", "--from", "hf", tmp_path / "hf", tmp_path / "back")
    assert "ROMEO" in cli(venv, "generate", "ROMEO:", "--ckpt-dir", tmp_path / "back", "--max-gen-len", "4").stdout
    corpus = tmp_path / "corpus"; corpus.mkdir()
    for i in range(8): (corpus / f"d{i}.txt").write_text("To be, or not to be, that is the question. " * 40)
    cli(venv, "train", "--corpus", corpus, "--out", tmp_path / "ck", "--steps", "2", "--dim", "32", "--n-layers", "1",
        "--n-heads", "2", "--n-kv-heads", "1", "--multiple-of", "32", "--seq-len", "32", "--batch-size", "2",
        "--eval-interval", "2", "--eval-iters", "1")


def test_gguf_and_tiktoken_from_the_wheel(venv, tmp_path):
    """GGUF (gguf) and Llama 3's tokenizer (tiktoken) work with the declared requirements alone."""
    from llama_lit.assets import smollm2_path
    from llama_lit.tokenizer import llama3_tokenizer_path
    py, _ = venv
    code = ("from llama_lit.tokenizer import Tokenizer; import sys; "
            "print(Tokenizer(sys.argv[1]).n_words, Tokenizer(sys.argv[2]).n_words)")
    r = run([py, "-c", code, llama3_tokenizer_path(), smollm2_path()], cwd=tmp_path)
    assert r.stdout.split() == ["128256", "49152"]
    cli(venv, "convert", "--from", "gguf", smollm2_path(), tmp_path / "smol")
    assert (tmp_path / "smol" / "tokenizer.json").is_file()


def test_the_wheel_ships_the_kernels_source(venv):
    "The C++ of the CPU kernels is package data: the wheel holds llama_lit/csrc/kernels.cpp as the repository has it."
    _, d = venv
    with zipfile.ZipFile(next((d / "dist").glob("llama_lit-*.whl"))) as z:
        cpp = [n for n in z.namelist() if n.startswith("llama_lit/csrc/")]
        assert cpp == ["llama_lit/csrc/isa.h", "llama_lit/csrc/kernels.cpp", "llama_lit/csrc/kquants.cpp",
                       "llama_lit/csrc/step.cpp"], cpp
        for name in cpp: assert z.read(name) == (ROOT / name).read_bytes()


def test_kernels_build_from_the_installed_copy(venv, tmp_path):
    "In the plain install the kernels compile from the installed csrc/kernels.cpp (a fresh build folder) and run."
    from llama_lit.kernels import kernels_unavailable_reason
    if kernels_unavailable_reason(): pytest.skip(f"kernels cannot build here: {kernels_unavailable_reason()}")
    py, _ = venv
    code = ("import torch; from llama_lit import kernels; kernels.load_kernels(); "
            "kl = kernels.KernelLinear.from_float(torch.randn(8, 64), 'q4_1'); "
            "print(kernels.KERNEL_SOURCES[0]); print(tuple(kl(torch.randn(3, 64)).shape))")
    r = run([py, "-c", code], cwd=tmp_path, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    src, shape = r.stdout.splitlines()[-2:]
    assert "site-packages" in src and src.endswith("llama_lit/csrc/kernels.cpp") and str(ROOT) not in src
    assert shape == "(3, 8)" and list((tmp_path / "ext").rglob("llama_lit_kernels_*.so"))
