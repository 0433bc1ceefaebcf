"""Multi-process generation (torchrun, gloo on CPU): any checkpoint shard count on any process count gives the
single-process tokens and logits; a dying rank ends the run with an error instead of a hang."""
import time

import torch

from conftest import HERE, torchrun


def run_gen(ckpt, nproc, tmp_path):
    out = tmp_path / f"gen_{ckpt.name}_{nproc}.pt"
    r = torchrun([HERE / "gen_check.py", ckpt, out], nproc=nproc)
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(out)


def test_any_shards_on_any_processes(ckpts, tmp_path):
    ref = run_gen(ckpts[1], 1, tmp_path)                       # MP=1 checkpoint, 1 process
    assert all(len(t) > 0 for t in ref["tokens"])
    for mp, nproc in ((1, 2), (2, 1), (2, 2)):
        got = run_gen(ckpts[mp], nproc, tmp_path)
        assert got["world"] == nproc
        assert got["tokens"] == ref["tokens"], (mp, nproc)
        assert (got["logits"] - ref["logits"]).abs().max().item() <= 1e-5, (mp, nproc)
        for a, b in zip(got["logprobs"], ref["logprobs"]):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5), (mp, nproc)


def test_dying_rank_fails_fast(ckpts):
    t0 = time.monotonic()
    r = torchrun([HERE / "die_check.py", ckpts[1]], nproc=2, timeout=180)
    assert r.returncode != 0
    assert "rank 0 finished generating" not in r.stdout
    assert time.monotonic() - t0 < 180


def test_cli_under_torchrun_prints_once(ckpts):
    r = torchrun(["-m", "llama_lit", "generate", "To be, or not", "--ckpt-dir", ckpts[2], "--temperature", "0",
                  "--max-gen-len", "6"], nproc=2)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("To be, or not") == 1               # only rank 0 prints


def test_heads_not_divisible_by_processes(tmp_path):
    from conftest import write_random_checkpoint
    ckpt = write_random_checkpoint(tmp_path / "h3", dim=48, n_heads=3, n_kv_heads=3)
    r = torchrun(["-m", "llama_lit", "generate", "hi", "--ckpt-dir", ckpt], nproc=2)
    assert r.returncode != 0
    assert "n_heads=3 and n_kv_heads=3 must be divisible by the number of model-parallel processes (2)" in r.stderr
