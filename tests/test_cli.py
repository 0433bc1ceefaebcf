"""The CLI and the API refuse bad input one case at a time with a clear error, write checkpoints atomically,
stream exactly what they would print at once, and chat from a script."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import write_random_checkpoint
from llama_lit.cli import main
from llama_lit.generation import Llama, format_dialog
from llama_lit.checkpoint import load_shard, checkpoint_files


def run_main(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def cli(*argv, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "llama_lit", *map(str, argv)], capture_output=True, text=True,
                          input=input, timeout=timeout)


@pytest.fixture(scope="module")
def llm(ckpts):
    return Llama.build(ckpts[1], max_seq_len=64, max_batch_size=2)


# --- bad input, one by one -------------------------------------------------------------------------------

def test_missing_ckpt_dir(capsys, tmp_path):
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", tmp_path / "nope")
    assert code == 1 and f"checkpoint not found: {tmp_path / 'nope'}" in err


def test_missing_params(capsys, tmp_path):
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", tmp_path)
    assert code == 1 and f"{tmp_path} has neither params.json (Meta) nor config.json (Hugging Face)" in err


def test_missing_tokenizer(capsys, ckpts, tmp_path):
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", ckpts[1], "--tokenizer", tmp_path / "t.model")
    assert code == 1 and f"tokenizer model not found: {tmp_path / 't.model'}" in err


def test_no_checkpoint_files(capsys, ckpts, tmp_path):
    shutil.copy(ckpts[1] / "params.json", tmp_path / "params.json")
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", tmp_path, "--tokenizer", ckpts[1] / "tokenizer.model")
    assert code == 1 and f"no consolidated.*.pth checkpoint files in {tmp_path}" in err


def test_vocab_mismatch(capsys, ckpts, tmp_path):
    d = tmp_path / "v"
    shutil.copytree(ckpts[1], d)
    params = json.loads((d / "params.json").read_text())
    (d / "params.json").write_text(json.dumps({**params, "vocab_size": 32000}))
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", d)
    assert code == 1 and "vocab_size=32000" in err and "tok_embeddings.weight has shape (4096, 64)" in err


def test_corrupt_or_truncated_pth(capsys, ckpts, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(ckpts[1], d)
    pth = d / "consolidated.00.pth"
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", d)
    assert code == 1 and str(pth) in err and "corrupt or truncated" in err


def test_prompt_longer_than_max_seq_len(capsys, ckpts):
    code, _, err = run_main(capsys, "generate", "word " * 80, "--ckpt-dir", ckpts[1], "--max-seq-len", "32")
    assert code == 1 and "is longer than max_seq_len=32" in err


def test_more_prompts_than_max_batch_size(llm):
    with pytest.raises(ValueError, match="3 prompts exceed max_batch_size=2"):
        llm.text_completion(["a", "b", "c"])


@pytest.mark.parametrize("flag,value,msg", [("--temperature", "-0.1", "temperature must be a number >= 0"),
                                            ("--top-p", "0", "top_p must be in (0, 1]"),
                                            ("--top-p", "1.01", "top_p must be in (0, 1]")])
def test_sampling_parameters(capsys, ckpts, flag, value, msg):
    code, _, err = run_main(capsys, "generate", "hi", "--ckpt-dir", ckpts[1], flag, value)
    assert code == 1 and msg in err


@pytest.mark.parametrize("roles", [["assistant"], ["user", "user"], ["user", "assistant"], ["system"],
                                   ["system", "assistant", "user"], ["user", "system", "user"]])
def test_wrong_dialog_roles(llm, roles):
    dialog = [{"role": r, "content": "x"} for r in roles]
    with pytest.raises(ValueError, match="optional 'system' first, then 'user' and 'assistant' alternating"):
        llm.chat_completion([dialog])


def test_no_bare_assert_guards_user_input():
    """Input checks must survive `python -O` (which strips asserts)."""
    r = subprocess.run([sys.executable, "-O", "-c",
                        "from llama_lit.generation import Llama\n"
                        "try: Llama.build('/no/such/dir')\n"
                        "except FileNotFoundError as e: print('ok', e)"], capture_output=True, text=True)
    assert r.stdout.startswith("ok checkpoint not found"), r.stderr


# --- what it does --------------------------------------------------------------------------------------

def test_generate_cli_matches_api(ckpts, llm):
    r = cli("generate", "To be, or not to be", "ROMEO:", "--ckpt-dir", ckpts[1], "--temperature", "0", "--max-gen-len", "8")
    assert r.returncode == 0, r.stderr
    want = llm.text_completion(["To be, or not to be", "ROMEO:"], temperature=0.0, max_gen_len=8)
    assert r.stdout.split("=" * 40 + "\n")[:2] == [f"To be, or not to be{want[0]['generation']}\n",
                                                   f"ROMEO:{want[1]['generation']}\n"]


def test_stream_equals_batch(ckpts):
    base = ["generate", "Now is the winter", "--ckpt-dir", ckpts[1], "--temperature", "0", "--max-gen-len", "12"]
    a, b = cli(*base), cli(*base, "--stream")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert b.stdout == a.stdout.split("=" * 40)[0]


def test_chat_scripted_keeps_within_max_seq_len(ckpts):
    lines = "".join(f"line number {i} of a scripted conversation\n" for i in range(6))
    r = cli("chat", "--ckpt-dir", ckpts[1], "--temperature", "0", "--max-gen-len", "8", "--max-seq-len", "64",
            "--system", "Be brief.", input=lines)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant:") == 6                # every message answered, old ones dropped to fit


HELP = {"generate": ["--max-gen-len", "--temperature", "--top-p", "--seed", "--stream", "--ckpt-dir", "--tokenizer",
                     "--max-seq-len"],
        "chat": ["--system", "--max-gen-len", "--temperature", "--top-p", "--seed", "--ckpt-dir", "--tokenizer"],
        "convert": ["--from", "--to"], "reshard": ["--mp"], "demo": ["--prompt", "--max-gen-len", "--seed"],
        "train": ["--corpus", "--out", "--steps", "--dim", "--n-layers", "--lr", "--seed"]}


@pytest.mark.parametrize("cmd", sorted(HELP))
def test_help_explains_every_flag(cmd):
    r = cli(cmd, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())                       # argparse wraps lines
    for flag in HELP[cmd]:
        assert flag in text, (cmd, flag)
    if cmd in ("generate", "chat"):
        assert "(default: 0.6)" in text and "(default: 0.9)" in text and "(default: 64)" in text


def test_reshard_cli(ckpts, tmp_path):
    r = cli("reshard", ckpts[1], tmp_path / "mp2", "--mp", "2")
    assert r.returncode == 0, r.stderr
    assert len(checkpoint_files(tmp_path / "mp2")) == 2 and (tmp_path / "mp2" / "tokenizer.model").is_file()
    full, back = load_shard(ckpts[1]), load_shard(tmp_path / "mp2")        # 2 shards read by 1 process
    assert all(torch.equal(full[k], back[k]) for k in full)


def test_interrupted_reshard_leaves_nothing(ckpts, tmp_path, monkeypatch):
    import llama_lit.checkpoint as ck
    calls = []
    real_save = torch.save

    def dying_save(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2: raise KeyboardInterrupt("killed")   # after the first shard is on disk
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.reshard(ckpts[1], tmp_path / "out", 2)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []                   # no temporary directory left behind either


def test_refuses_to_overwrite(capsys, ckpts):
    code, _, err = run_main(capsys, "reshard", ckpts[1], ckpts[2], "--mp", "1")
    assert code == 1 and "already exists" in err


# --- the model shipped in the package -------------------------------------------------------------------

def test_generate_with_no_flags_uses_the_shipped_model():
    r = cli("generate", "ROMEO:", "--max-gen-len", "24", "--seed", "3")
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert r.stdout.startswith("ROMEO:") and len(words) > 5


def test_chat_with_no_flags():
    r = cli("chat", "--max-gen-len", "16", input="Good morrow, sir.\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant:") == 1


def test_train_cli_writes_a_checkpoint_that_generates(tmp_path):
    r = cli("train", "--out", tmp_path / "ck", "--steps", "3", "--dim", "32", "--n-layers", "1", "--n-heads", "2",
            "--n-kv-heads", "1", "--multiple-of", "32", "--seq-len", "32", "--batch-size", "2", "--eval-interval", "3",
            "--eval-iters", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "validation loss" in r.stdout
    g = cli("generate", "To be", "--ckpt-dir", tmp_path / "ck", "--max-gen-len", "4")
    assert g.returncode == 0, g.stderr
