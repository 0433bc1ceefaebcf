"""bench/generate.py's GPU choices, checked on a CPU (issue 17, item 10), and scripts/gpu_check.sh --dry-run.

The bench on a (faked) GPU picks the Llama-2-7B shape; models are built directly in their dtype on their device (no
float32 copy); the tensor-parallel bandwidth bound counts each rank's shard at each rank's bandwidth; a bf16 run does
not stop on a near-tie of the top-2 logits, while float32 still fails on a real disagreement."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llama_lit.config import LLAMA_CONFIGS, ModelArgs
from llama_lit.parallel import init_model_parallel
from llama_lit.config import count_params
from llama_lit.quant import quantize_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- the shape a GPU gets ------------------------------------------------------------------------------------------
def test_bench_config_on_cuda_is_llama2_7b(bench):
    name, cfg = bench.bench_config("cuda")
    assert name == "llama2-7b" and cfg == LLAMA_CONFIGS["llama2-7b"]
    assert round(count_params(ModelArgs(**cfg)) / 1e6, 1) == 6738.4
    name, cfg = bench.bench_config("cpu")
    assert name == "cpu-default" and round(count_params(ModelArgs(**cfg)) / 1e6, 1) == 124.7
    assert bench.bench_config("cuda", tiny=True)[0] == "tiny"
    assert bench.bench_config("cpu", config="llama2-13b")[1] == LLAMA_CONFIGS["llama2-13b"]
    with pytest.raises(ValueError, match="unknown --config"):
        bench.bench_config("cuda", config="llama9-1t")


def test_parse_args_on_a_faked_gpu(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = bench.parse_args([])
    assert args.device == "cuda" and args.config_name == "llama2-7b" and args.cfg["dim"] == 4096
    assert args.dtype == torch.bfloat16 and (args.prompt_len, args.new_tokens) == (128, 128)
    args = bench.parse_args(["--quant", "int4", "--compile"])
    assert args.quant == "int4" and args.compile and args.skip_transformers      # transformers' weights would differ
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = bench.parse_args([])
    assert args.device == "cpu" and args.config_name == "cpu-default" and args.dtype == torch.float32
    with pytest.raises(SystemExit):                                             # no GPU: a clear argparse error
        bench.parse_args(["--device", "cuda"])
    assert bench.parse_args(["--device", "cuda", "--show-config"]).config_name == "llama2-7b"


# ---- built in bf16 on the target device ---------------------------------------------------------------------------
class Allocations(TorchDispatchMode):
    "Records (dtype, numel, device) of every tensor an op creates."
    def __init__(self): super().__init__(); self.seen = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor): self.seen.append((t.dtype, t.numel(), t.device.type))
        return out


SMALL = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1024, multiple_of=32)


def test_models_are_built_in_bf16_without_a_float32_copy(bench):
    init_model_parallel()
    margs = ModelArgs(**SMALL, max_batch_size=2, max_seq_len=16)
    smallest = min(o * i for o, i in [(margs.n_kv_heads * margs.head_dim, margs.dim)])     # wk: the smallest matrix
    with Allocations() as rec:
        model = bench.build_llama_lit(margs, torch.device("cpu"), torch.bfloat16)
        hf = bench.build_hf(SMALL, margs, model, torch.device("cpu"), torch.bfloat16)
    big_f32 = [s for s in rec.seen if s[0] == torch.float32 and s[1] >= smallest]
    assert not big_f32, f"float32 tensors of weight size were made while building: {big_f32[:5]}"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} == {p.dtype for p in hf.parameters()}
    assert {b.dtype for b in model.buffers()} == {torch.bfloat16} and model.freqs_cis.dtype == torch.complex64
    assert float(model.layers[0].attention.wq.weight.float().std()) == pytest.approx(0.02, rel=0.2)
    # the same weights on both sides (HF's q/k rows permuted to its RoPE layout)
    assert torch.equal(hf.model.layers[1].mlp.down_proj.weight, model.layers[1].feed_forward.w2.weight)


def test_models_are_built_on_the_target_device(bench):
    "On the meta device nothing real exists: every parameter, buffer, cache and RoPE table must be there, not on the CPU."
    init_model_parallel()
    margs = ModelArgs(**SMALL, max_batch_size=2, max_seq_len=16)
    meta = torch.device("meta")
    model = bench.build_llama_lit(margs, meta, torch.bfloat16)
    assert {(t.device.type, t.dtype) for t in [*model.parameters(), *model.buffers()]} == {("meta", torch.bfloat16)}
    assert model.freqs_cis.device.type == "meta" and model.freqs_cis.dtype == torch.complex64
    hf = bench.build_hf(SMALL, margs, model, meta, torch.bfloat16)
    assert {p.device.type for p in hf.parameters()} == {"meta"} and {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    tied = ModelArgs(**SMALL, tie_word_embeddings=True, max_batch_size=1, max_seq_len=8)
    m2 = bench.build_llama_lit(tied, torch.device("cpu"), torch.bfloat16)
    assert m2.output.weight is m2.tok_embeddings.weight


# ---- the bandwidth bound, per rank --------------------------------------------------------------------------------
def test_tensor_parallel_bound_uses_per_rank_bytes_and_bandwidth(bench):
    args = ModelArgs(**LLAMA_CONFIGS["llama2-7b"])
    one = bench.read_bytes_per_token(args, "bf16")
    assert one == pytest.approx((count_params(args) - 32000 * 4096) * 2)          # 13.21 GB: all but the embedding
    assert one / 1e9 == pytest.approx(13.21, abs=0.01)
    assert bench.decode_bound(one, 4.8e12) == pytest.approx(363.3, abs=0.1)       # H200, batch 1
    assert bench.decode_bound(one, 3.35e12) == pytest.approx(253.6, abs=0.1)      # H100
    two = bench.read_bytes_per_token(args, "bf16", mp=2)
    norms = (2 * 32 + 1) * 4096 * 2                                               # every rank holds the norms whole
    assert two == pytest.approx((one - norms) / 2 + norms)
    b1, b2 = bench.decode_bound(one, 4.8e12), bench.decode_bound(two, 4.8e12)
    assert b2 == pytest.approx(2 * b1, rel=1e-4)          # 2 GPUs, each reading half: twice the tokens/s bound
    assert b2 > 1.99 * (4.8e12 / one)                     # not one GPU's bandwidth over the whole model's bytes
    assert bench.decode_bound(one, 4.8e12, batch=8) == pytest.approx(8 * b1)
    assert bench.read_bytes_per_token(args, "int8") / 1e9 == pytest.approx(6.61, abs=0.01)
    assert bench.read_bytes_per_token(args, "int4", head_fmt="int8") / 1e9 == pytest.approx(4.18, abs=0.01)
    with pytest.raises(ValueError): bench.read_bytes_per_token(args, mp=0)
    with pytest.raises(ValueError): bench.decode_bound(0, 4.8e12)


def test_bound_line_on_an_h200_and_on_two_gpus(bench):
    import argparse
    args = argparse.Namespace(prompt_len=128, new_tokens=128, dtype=torch.bfloat16, quant=None, config_name="llama2-7b")
    margs = ModelArgs(**LLAMA_CONFIGS["llama2-7b"], max_batch_size=8, max_seq_len=256)
    one = bench.read_bytes_per_token(margs, "bf16")
    bws = (4.3e12, 4.8e12, "NVIDIA H200")
    line = bench.bound_line(args, margs, "llama_lit fast+compile", 1, 180.0, one, 1, bws)
    kv = 2 * 32 * 32 * 128 * 192 * 2                                  # K and V at the mean position 192, batch 1
    assert f"of the datasheet bound {4.8e12 / (one + kv):.1f} tok/s" in line and "gpt-fast bf16: 104.9" in line
    assert f"{180 / (4.8e12 / (one + kv)):.0%} of the datasheet bound" in line
    two = bench.bound_line(args, margs, "llama_lit fast", 1, 180.0, bench.read_bytes_per_token(margs, "bf16", mp=2), 2, bws)
    b2 = float(two.split("datasheet bound ")[1].split()[0])
    assert b2 == pytest.approx(2 * 4.8e12 / (one + kv), rel=2e-3) and "gpt-fast" not in two


def test_spec_bandwidth_by_gpu_name(bench):
    assert bench.spec_bandwidth("NVIDIA H200") == 4.8e12
    assert bench.spec_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.spec_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert bench.spec_bandwidth("Some Other GPU") is None


@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_model_read_bytes_matches_the_formula(bench, quant):
    "What the run divides by (its own model's bytes) is what read_bytes_per_token says on paper."
    init_model_parallel()
    margs = ModelArgs(**SMALL, max_batch_size=1, max_seq_len=8)
    model = bench.build_llama_lit(margs, torch.device("cpu"), torch.bfloat16)
    if quant: quantize_model(model, quant, head="int8" if quant == "int4" else None)
    fmt, head = quant or "bf16", ("int8" if quant == "int4" else None)
    assert bench.model_read_bytes(model) == pytest.approx(bench.read_bytes_per_token(margs, fmt, head))


# ---- near-ties in bf16 --------------------------------------------------------------------------------------------
def _logits(top, second, n=100):
    lg = torch.linspace(-3, 0, n)
    lg[7], lg[42] = top, second
    return lg


def test_near_tie_on_synthetic_logits(bench):
    lg = _logits(5.0, 4.99)
    tie, gap, tol = bench.near_tie(lg, 42, 7, torch.bfloat16)
    assert tie and gap == pytest.approx(0.01, abs=1e-5) and tol == pytest.approx(5.0 / 32)
    assert not bench.near_tie(lg, 42, 7, torch.float32)[0]                        # float32 cannot flip a 0.01 gap
    assert not bench.near_tie(_logits(5.0, 4.0), 42, 7, torch.bfloat16)[0]        # a clear winner
    assert not bench.near_tie(lg, 3, 7, torch.bfloat16)[0]                        # not the second most likely
    with pytest.raises(ValueError): bench.near_tie(lg[None], 42, 7, torch.bfloat16)
    assert bench.shared_prefix([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]]) == [2, 3]


def _check(bench, monkeypatch, logits, dtype):
    monkeypatch.setattr(bench, "judge_logits", lambda model, toks: logits)
    lines = []
    tokens = {"transformers default": [[1, 2, 7, 7]], "llama_lit fast": [[1, 2, 42, 0]]}
    loud = bench.check_tokens(tokens, "transformers default", [[5, 6]], None, dtype, 1, 4, lines.append)
    return loud, lines


def test_bf16_near_tie_does_not_stop_the_run(bench, monkeypatch):
    loud, lines = _check(bench, monkeypatch, _logits(5.0, 4.99), torch.bfloat16)
    assert loud == [] and "near-tie of the top-2 logits" in lines[0] and "new token 2" in lines[0]
    assert "greedy prefix of 2..2 of 4" in lines[0]


def test_bf16_real_disagreement_is_loud_but_reported(bench, monkeypatch):
    loud, lines = _check(bench, monkeypatch, _logits(5.0, 3.0), torch.bfloat16)
    assert len(loud) == 1 and lines[0].startswith("WARNING") and "real disagreement" in lines[0]


def test_float32_real_disagreement_still_fails(bench, monkeypatch):
    with pytest.raises(SystemExit, match="no speed reported"):
        _check(bench, monkeypatch, _logits(5.0, 3.0), torch.float32)


# ---- runs ----------------------------------------------------------------------------------------------------------
def _run(cmd, timeout=240):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_small_cpu_bench_finishes(bench):
    r = _run([sys.executable, "bench/generate.py", "--tiny", "--runs", "1", "--batches", "1,2", "--new-tokens", "4",
              "--prompt-len", "8", "--dtype", "bfloat16", "--device", "cpu"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("decode ratio vs transformers: ")
    assert "tiny: 0.2M parameters" in r.stdout and "bfloat16" in r.stdout.splitlines()[0]


def test_gpu_check_dry_run():
    r = _run(["bash", "scripts/gpu_check.sh", "--dry-run"], timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "plan (stage: timeout s)" in out and "torch.cuda.is_available(): False" in out
    for q, gbytes in (("bf16", "13.21"), ("int8", "6.61"), ("int4", "4.18")):
        assert f"=== stage {q}" in out
        assert f"weights read per decode step: {gbytes} GB" in out
    assert out.count("config llama2-7b on cuda: 6738.4M parameters") == 3
    assert "decode ratio vs transformers: " in out                               # the tiny CPU bench ran
    assert "104.9" in out and "A100" in out
    for stage in ("install: ok", "env: ok", "bf16: ok", "int8: ok", "int4: ok"):
        assert stage in out
    bad = _run(["bash", "scripts/gpu_check.sh", "--bogus"])
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
    bad = _run(["bash", "scripts/gpu_check.sh", "--dry-run", "--only", "bf16,nope"])
    assert bad.returncode == 2 and "unknown stage 'nope'" in bad.stderr


def test_gpu_check_refuses_a_full_run_without_a_gpu():
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    r = _run(["bash", "scripts/gpu_check.sh"])
    assert r.returncode == 2 and "--dry-run" in r.stderr and "stage install" not in r.stdout
