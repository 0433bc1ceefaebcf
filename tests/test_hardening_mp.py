"""Hardening under torchrun (2 gloo processes on the CPU). The class of input: tensor-parallel ranks that do not hold
the same thing. Ranks given different prompts (same length or not) or different sampling settings (temperature,
top_p, max_gen_len, a re-seeded random state) must all raise one ValueError naming what differs, before the first
forward pass, instead of gloo's SIGABRT or mixed garbage with exit 0; ranks holding different replicated weights of
the same shape are named by `check_replicated`; a rank whose checkpoint shard is damaged gets its own error (naming
the file) to the user, whichever rank it is, in one `llama_lit: error:` line."""
import shutil
import textwrap

import pytest

from conftest import torchrun

MISMATCH = textwrap.dedent('''
    import os, sys
    import torch
    import llama_lit.build  # noqa: F401  (Llama.build)
    from llama_lit.generation import Llama
    rank = int(os.environ["RANK"])
    log = open(f"{sys.argv[2]}/rank{rank}.log", "w")
    def say(text): print(text, file=log, flush=True)
    llm = Llama.build(sys.argv[1], max_seq_len=64, max_batch_size=2)
    base = dict(prompt_tokens=[[1, 100, 200]], max_gen_len=5, temperature=0.0, top_p=0.9)
    cases = {
        "same": {},
        "sampled": dict(temperature=0.8, top_p=0.95),              # the same seed (Llama.build's): passes
        "sampled again": dict(temperature=0.8, max_gen_len=8),
        "prompt ids": dict(prompt_tokens=[[1, 100 + rank, 200]]),
        "prompt lengths": dict(prompt_tokens=[[1, 100, 200] + [300] * rank]),
        "prompt count": dict(prompt_tokens=[[1, 100, 200]] * (1 + rank)),
        "temperature": dict(temperature=0.5 * rank),
        "top_p": dict(temperature=0.7, top_p=0.9 - 0.1 * rank),
        "max_gen_len": dict(max_gen_len=5 + rank),
        "random state": dict(temperature=0.8),
    }
    for name, change in cases.items():
        if name == "random state": torch.manual_seed(rank)          # each rank seeded on its own
        try:
            llm.generate(**{**base, **change})
            say(f"rank {rank} case {name}: ok")
        except ValueError as e:
            say(f"rank {rank} case {name}: ValueError: {e}")
    say(f"rank {rank} done")
''')


def test_ranks_with_different_requests_refused(ckpts, tmp_path):
    script = tmp_path / "mismatch.py"; script.write_text(MISMATCH)
    r = torchrun([script, ckpts[1], tmp_path], nproc=2, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = "".join((tmp_path / f"rank{k}.log").read_text() for k in (0, 1))
    for rank in (0, 1):
        for name in ("same", "sampled", "sampled again"): assert f"rank {rank} case {name}: ok" in out, out
        for name, word in [("prompt ids", "prompt"), ("prompt lengths", "prompt"), ("prompt count", "prompt"),
                           ("temperature", "temperature"), ("top_p", "top_p"), ("max_gen_len", "max_gen_len"),
                           ("random state", "random")]:
            line = next((ln for ln in out.splitlines() if ln.startswith(f"rank {rank} case {name}:")), "")
            assert "ValueError" in line and word in line.split("ValueError")[1], (name, out)


REPLICATED = textwrap.dedent('''
    import os, sys
    import torch
    import llama_lit.build  # noqa: F401  (Llama.build)
    from llama_lit.generation import Llama
    from llama_lit.parallel import check_replicated
    rank = int(os.environ["RANK"])
    log = open(f"{sys.argv[2]}/rank{rank}.log", "w")
    def say(text): print(text, file=log, flush=True)
    llm = Llama.build(sys.argv[1], max_seq_len=64, max_batch_size=1)
    check_replicated(llm.model)
    say(f"rank {rank}: same weights pass")
    if rank == 1:
        with torch.no_grad(): llm.model.layers[1].ffn_norm.weight[3] += 1e-3    # same shape, one value changed
    try:
        check_replicated(llm.model)
        say(f"rank {rank}: no error")
    except ValueError as e:
        say(f"rank {rank}: ValueError: {e}")
''')


def test_check_replicated_names_the_tensor(ckpts, tmp_path):
    script = tmp_path / "replicated.py"; script.write_text(REPLICATED)
    r = torchrun([script, ckpts[2], tmp_path], nproc=2, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = "".join((tmp_path / f"rank{k}.log").read_text() for k in (0, 1))
    for rank in (0, 1):
        assert f"rank {rank}: same weights pass" in out, out
        line = next((ln for ln in out.splitlines() if ln.startswith(f"rank {rank}: ValueError")), "")
        assert "layers.1.ffn_norm.weight" in line, out


def damaged_shard(ckpts, tmp_path, shard: int):
    ckpt = shutil.copytree(ckpts[2], tmp_path / f"bad{shard}")
    f = ckpt / f"consolidated.{shard:02d}.pth"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ckpt, f.name


@pytest.mark.parametrize("shard", [0, 1])
def test_truncated_shard_named_once(ckpts, tmp_path, shard):
    ckpt, name = damaged_shard(ckpts, tmp_path, shard)
    r = torchrun(["-m", "llama_lit", "generate", "hi", "--ckpt-dir", ckpt, "--max-gen-len", "2"], nproc=2, timeout=300)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("llama_lit: error:")]
    assert len(errors) == 1 and name in errors[0], r.stderr[-4000:]


ONE_RANK_FAILS = textwrap.dedent('''
    import os, sys
    import llama_lit.build as build
    from llama_lit.cli import main
    if os.environ["RANK"] == sys.argv[1]:                      # only this rank cannot read its shard
        def unreadable(path, *a, **kw):
            raise OSError(f"cannot read {path}/consolidated.0{sys.argv[1]}.pth: Input/output error")
        build.load_model_shard = unreadable
    sys.exit(main(["generate", "To be", "--ckpt-dir", sys.argv[2], "--max-gen-len", "4", "--temperature", "0"]))
''')


@pytest.mark.parametrize("rank", [1, 0])
def test_error_of_one_rank_reaches_the_user(ckpts, tmp_path, rank):
    script = tmp_path / "one_rank_fails.py"; script.write_text(ONE_RANK_FAILS)
    r = torchrun([script, rank, ckpts[2]], nproc=2, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("llama_lit:")]
    assert len(lines) == 1, r.stderr[-4000:]
    assert lines[0].startswith("llama_lit: error:") and f"consolidated.0{rank}.pth" in lines[0], r.stderr[-4000:]
    assert f"rank {rank} of 2" in lines[0], r.stderr[-4000:]
