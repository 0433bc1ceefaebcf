"""The GPU path, checked on a CPU: `Llama.build` and `python -m llama_lit generate` run for 1 and 2 ranks with
`torch.cuda` faked and every tensor a FakeTensor (tests/fake_cuda.py). Each run's log says where every parameter,
buffer, cache and collective input was, which backend was asked for and which aten ops ran; FakeTensorMode itself
refuses any CPU/CUDA mix. Also on a plain CPU: tensor-parallel ranks sample the same tokens whatever seed each was
given, and building a model allocates no weights of its own before the checkpoint's replace them."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import HERE, Allocations, torchrun

FAKE = HERE / "fake_cuda.py"


def fake_run(args, tmp_path, nproc: int = 1, env: dict | None = None, timeout: int = 240):
    "Run `args` (a script or -m module) under fake CUDA; returns (CompletedProcess, [the log of each rank])."
    log = tmp_path / f"log{len(list(tmp_path.glob('log*')))}"
    e = {**os.environ, "FAKE_CUDA_LOG": str(log), "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc == 1: r = subprocess.run([sys.executable, FAKE, *map(str, args)], capture_output=True, text=True,
                                      timeout=timeout, env=e)
    else: r = torchrun([FAKE, *args], nproc=nproc, timeout=timeout, env=e)
    logs = [json.loads((log / f"rank{k}.json").read_text()) if (log / f"rank{k}.json").exists() else None
            for k in range(nproc)]
    return r, logs


def cli(ckpt, *flags):
    return ["-m", "llama_lit", "generate", "ROMEO:", "--ckpt-dir", ckpt, "--max-gen-len", "3", "--max-seq-len", "32",
            *flags]


def check_on(log: dict, device: str, dtype: str = "bfloat16") -> None:
    "Every parameter, buffer, cache and collective input of the run on `device` in `dtype`; freqs_cis complex64."
    assert log["errors"] == [] and len(log["models"]) == 1
    m = log["models"][0]
    where = f"{device} {dtype}"
    for kind in ("params", "buffers"):
        bad = {k: v for k, v in m[kind].items() if v != where}
        assert not bad, f"{kind} not on {where}: {bad}"
    assert m["caches"] and all(c.endswith(where) for c in m["caches"]), m["caches"]
    assert m["freqs_cis"] == f"{device} complex64"
    bad = [c for c in log["collectives"] if c[1:] != [device, dtype]
           and c[2] != "int64"]                      # the ranks' request and weight digests (03b): small int64 gathers
    assert not bad, bad
    return m


def test_one_gpu_cli(ckpts, tmp_path):
    "One process: the whole model, its caches and RoPE tables on cuda:0 in bf16; caches static for CUDA graphs; no CPU kernels built."
    r, (log,) = fake_run(cli(ckpts[1]), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ROMEO:" in r.stdout
    m = check_on(log, "cuda:0")
    assert m["rope_tables"] == ["cuda:0 float32"] * 2
    assert m["static_caches"] and all(m["static_caches"]), m["static_caches"]   # torch._dynamo.mark_static_address
    assert log["load_kernels"] == 0                          # chapter 11's AVX2 kernels are never compiled on a GPU run
    assert "cuda:0" in log["ops"]["aten.scaled_dot_product_attention.default"]


@pytest.mark.parametrize("quant,op,cpu_op", [("int8", "aten._weight_int8pack_mm.default", None),
                                              ("int4", "aten._weight_int4pack_mm.default",
                                               "aten._weight_int4pack_mm_for_cpu.default")])
def test_one_gpu_quantized_cli(ckpts, tmp_path, quant, op, cpu_op):
    "--quant on a GPU: the model resolves its device before quantizing, packs on it and runs torch's CUDA kernels."
    r, (log,) = fake_run(cli(ckpts[1], "--quant", quant), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert log["load_kernels"] == 0
    q = log["models"][0]["qlinear"]
    assert q and all(v["type"] == "QuantLinear" for v in q.values())
    assert all(w.startswith("cuda:0 ") for v in q.values() for w in v["buffers"].values()), q
    assert log["ops"].get(op) == ["cuda:0"], sorted(k for k in log["ops"] if "pack" in k)
    if cpu_op: assert cpu_op not in log["ops"]
    assert "aten._convert_weight_to_int4pack_for_cpu.default" not in log["ops"]


def test_two_gpus_cli(ckpts, tmp_path):
    "Two ranks: each on cuda:LOCAL_RANK, NCCL asked for CUDA tensors (gloo for CPU ones), collectives on the rank's GPU in bf16."
    r, logs = fake_run(cli(ckpts[2]), tmp_path, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank, log in enumerate(logs):
        assert log["backend"] == "cuda:nccl,cpu:gloo"
        assert log["set_device"] == [rank]
        check_on(log, f"cuda:{rank}")
        ops = {c[0] for c in log["collectives"]}
        assert any("all_reduce" in o for o in ops) and any("all_gather" in o for o in ops), ops


def test_one_gpu_per_rank(ckpts, tmp_path):
    "CUDA_VISIBLE_DEVICES per rank: each process sees one GPU, cuda:0, whatever its LOCAL_RANK."
    r, logs = fake_run(cli(ckpts[2]), tmp_path, nproc=2, env={"FAKE_CUDA_DEVICES": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    for log in logs: check_on(log, "cuda:0")


CPU_BUILD = """
import sys, torch
from llama_lit.generation import Llama
llm = Llama.build(sys.argv[1], max_seq_len=32, max_batch_size=1, device="cpu")
llm.text_completion(["ROMEO:"], max_gen_len=2)
"""


def test_cpu_model_on_a_gpu_machine(ckpts, tmp_path):
    "Llama.build(device='cpu') under torchrun on a GPU machine: float32 on the CPU, its all-reduces over gloo, not NCCL."
    script = tmp_path / "cpu_build.py"
    script.write_text(CPU_BUILD)
    r, logs = fake_run([script, ckpts[2]], tmp_path, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    for log in logs:
        assert "cpu:gloo" in log["backend"] or log["backend"] == "gloo", log["backend"]
        assert log["set_device"] == []                       # no CUDA context for a CPU model
        check_on(log, "cpu", "float32")
        assert log["collectives"]


DTYPES = """
import json, os
from llama_lit.build import default_device_dtype
out = {}
for bf16 in ("native", "emulated", "none"):
    os.environ["FAKE_CUDA_BF16"] = bf16               # what the fake GPU says of bf16 (tests/fake_cuda.py)
    out[bf16] = [str(d) for d in default_device_dtype()] + [str(d) for d in default_device_dtype("cpu")]
print(json.dumps(out))
"""


def test_default_dtype(tmp_path):
    "bf16 only where the GPU has it natively (not emulated, as on a V100 or T4), float16 otherwise; the CPU float32 even on a GPU machine."
    script = tmp_path / "dtypes.py"
    script.write_text(DTYPES)
    r, _ = fake_run([script], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    cpu = ["cpu", "torch.float32"]
    assert got == {"native": ["cuda:0", "torch.bfloat16", *cpu], "emulated": ["cuda:0", "torch.float16", *cpu],
                   "none": ["cuda:0", "torch.float16", *cpu]}


def test_cache_checked_against_gpu_memory(ckpts, tmp_path):
    "A KV cache larger than the GPU's free memory is refused before it is allocated, naming the GPU (not host RAM)."
    r, _ = fake_run(cli(ckpts[1]), tmp_path, env={"FAKE_CUDA_FREE_GIB": "1e-6"})
    assert r.returncode == 1
    assert "GPU" in r.stderr and "free" in r.stderr and "lower --max-seq-len" in r.stderr, r.stderr[-2000:]


# ---- on a plain CPU ----

SEEDS = """
import json, os, sys
from llama_lit.generation import Llama
rank = int(os.environ["RANK"])
llm = Llama.build(sys.argv[1], max_seq_len=48, max_batch_size=2, seed=100 + rank)     # a different seed on each rank
out = llm.generate([llm.tokenizer.encode(s, bos=True, eos=False) for s in ("ROMEO:", "To be")], max_gen_len=40,
                   temperature=0.9, top_p=0.95)[0]
print("TOKENS", rank, json.dumps(out), flush=True)
"""


def test_ranks_sample_alike_whatever_their_seed(ckpts, tmp_path):
    "Two gloo ranks given different seeds: rank 0's seed is used on both, so they draw the same tokens and stop together."
    script = tmp_path / "seeds.py"
    script.write_text(SEEDS)
    r = torchrun([script, ckpts[2]], nproc=2, timeout=180, env={**os.environ, "LLAMA_LIT_DIST_TIMEOUT": "60"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict(line.split(" ", 2)[1:] for line in r.stdout.splitlines() if line.startswith("TOKENS"))
    assert set(got) == {"0", "1"}
    assert got["0"] == got["1"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_build_allocates_no_weights(ckpts, dtype):
    "build_transformer allocates only the KV caches and RoPE table: no fp32 weights of its own that the checkpoint's then replace."
    from llama_lit.attention import ModelArgs, kv_cache_bytes
    from llama_lit.build import build_transformer, load_model_shard, read_model_params
    params = read_model_params(ckpts[1])
    args = ModelArgs.from_params(params, max_seq_len=64, max_batch_size=2)
    sd = load_model_shard(ckpts[1], params)
    weights = sum(v.numel() * 4 for v in sd.values())
    with Allocations() as a:
        model = build_transformer(args, sd, "cpu", dtype)
    caches = kv_cache_bytes(args, batch=2, bytes_per_value=dtype.itemsize)
    freqs = model.freqs_cis.numel() * model.freqs_cis.element_size()
    assert a.bytes.get("cpu", 0) <= caches + 2 * freqs + 4096, (a.bytes, caches, freqs, weights)
    assert model.layers[0].attention.cache_k.dtype == dtype and model.layers[0].attention.cache_k.device.type == "cpu"
    assert model.norm.weight.dtype == dtype and model.freqs_cis.dtype == torch.complex64
