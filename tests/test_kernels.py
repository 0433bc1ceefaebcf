"""Chapter 11's CPU kernels: each against its float64 reference (int8 activations rounded exactly as
`quantize_activations`), GGUF blocks regrouped bit for bit, KernelLinear against its own dequantized weight, the real
SmolLM2 file through the kernels (logits near the float model's, same answer), torch.compile through the ops, the
fallback when they cannot build, and bad input -> ValueError; the C++ is the shipped llama_lit/csrc file, its
sections are the whole file and the chapter shows each. No timings."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from llama_lit.gguf import unpack_nibbles
from llama_lit.kernels import (CHAPTER_CPP, CSRC_DIR, KERNEL_SOURCES, KernelLinear, cpp_section, cpp_sections, cpu_isas,
                               default_isa, float_kernel, fuse_rows, kernel_isa, kernel_qlinear, kernels_available,
                               kernels_unavailable_reason, load_kernels, q4_1_linear, q5_0_linear, q5_1_linear,
                               q5_blocks, q8_0_linear, float_linear, quantize_activations, reference_block_linear,
                               reference_q4_1_linear, reference_q8_0_linear, set_kernel_isa, split_q4_0_blocks,
                               split_q4_1_blocks, split_q8_0_blocks)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(kernels_unavailable_reason() is not None,
                                reason=f"kernels cannot build here: {kernels_unavailable_reason()}")
torch.set_num_threads(2)


def _inductor_builds_right() -> bool:
    "torch 2.13's inductor CPU code is wrong below the CPU's own capability: ATEN_CPU_CAPABILITY=default fails to compile ('at::vec' has not been declared), =avx2 on an AVX-512 CPU loops 16 lanes over 8-lane vectors and leaves half the values unprocessed."
    from llama_lit.quant import cpu_capabilities
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    return cap in ("", cpu_capabilities()[-1])


compiles_right = pytest.mark.skipif(not _inductor_builds_right(),
                                    reason="torch.compile's CPU code is wrong under a lowered ATEN_CPU_CAPABILITY (torch 2.13 bug)")


@pytest.fixture(params=cpu_isas() or ["avx2"])
def isa(request):
    "Each kernel variant this CPU can run, set for the test and put back after (both in one process)."
    before = set_kernel_isa(request.param)
    yield request.param
    set_kernel_isa(before)


def pack(codes):
    "Codes (N, K) 0..15 -> Q4_1 bytes (N, K/2): per block, weight j low nibble, j+16 high."
    b = codes.reshape(codes.shape[0], -1, 2, 16)
    return (b[:, :, 0] | b[:, :, 1] << 4).reshape(codes.shape[0], -1)


def odd_x(M, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    x[0, :32] = 0                                               # an all-zero block: scale 0
    if M > 1: x[1, 32:64] *= 1000
    if M > 2: x[2, -32:] = -x[2, -32:].abs()                    # all negative
    return x


SHAPES = [(130, 576), (7, 64), (576, 1536), (1, 32), (5, 32), (9, 96), (6, 160), (13, 544)]   # odd block counts


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("M", [1, 3, 8, 46])
def test_q4_1_and_q8_0_kernels_equal_their_reference(N, K, M, isa):
    torch.manual_seed(N + K + M)
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    codes[0, :32] = 15; codes[-1, -32:] = 0
    d, m = (torch.randn(N, K // 32) * 0.02).half(), (torch.randn(N, K // 32) * 0.1).half()
    d[0, 0] = 0
    q8 = torch.randint(-128, 128, (N, K), dtype=torch.int8)    # -128 too: |w| must not overflow the sign trick
    x = odd_x(M, K)
    ref = reference_q4_1_linear(x, pack(codes), d, m)
    assert (q4_1_linear(x, pack(codes), d, m) - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6
    ref = reference_q8_0_linear(x, q8, d)
    assert (q8_0_linear(x, q8, d) - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("M", [1, 5, 46])
def test_q5_kernels_equal_their_reference(N, K, M, isa):
    "Q5_0 / Q5_1 from gguf's reference quantizer, against gguf's dequantize with the kernels' int8 activations."
    torch.manual_seed(N + K + M)
    w, x = torch.randn(N, K) * 0.05, odd_x(M, K)
    w[0, :32] = 0                                               # a zero scale
    if N > 1: w[1, :32] = w[1, :32].abs() + 0.1                 # all positive: Q5_1's m > 0, every code high
    for T, op in ((QT.Q5_0, q5_0_linear), (QT.Q5_1, q5_1_linear)):
        raw = quantize(w.numpy(), T)
        f = q5_blocks(raw, (N, K), T)
        ref = reference_block_linear(x, torch.from_numpy(dequantize(raw, T)))
        got = op(x, f["qs"], f["qh"], f["d"], *([f["m"]] if "m" in f else []))
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6, (T.name, isa)
        assert torch.equal(KernelLinear.from_q5(f["qs"], f["qh"], f["d"], f.get("m")).dequantize(),
                           torch.from_numpy(dequantize(raw, T)))


def test_the_isa_is_chosen_from_the_cpu_and_the_switches(monkeypatch):
    both = "flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16\n"
    assert cpu_isas(both) == ("avx2", "avx512") and cpu_isas(both.replace("avx512_vnni", "avx_vnni")) == ("avx2",)
    assert cpu_isas(both.replace(" avx512dq", "")) == ("avx2",) and cpu_isas("flags : fpu avx\n") == ()
    monkeypatch.delenv("LLAMA_LIT_KERNELS_ISA", raising=False)
    for cap, want in (("", "avx512"), ("avx512", "avx512"), ("avx2", "avx2"), ("default", "avx2")):
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", cap)
        assert default_isa(both) == want, cap
    monkeypatch.setenv("LLAMA_LIT_KERNELS_ISA", "avx2")
    assert default_isa(both) == "avx2"
    monkeypatch.setenv("LLAMA_LIT_KERNELS_ISA", "neon")
    with pytest.raises(ValueError, match="'neon' is not one of avx2, avx512"): default_isa(both)
    monkeypatch.setenv("LLAMA_LIT_KERNELS_ISA", "avx512")
    with pytest.raises(ValueError, match="this CPU lacks avx512_vnni \\(it runs avx2\\)"):
        default_isa(both.replace(" avx512_vnni", ""))
    with pytest.raises(ValueError, match="not one of"): set_kernel_isa("avx1024")
    assert kernel_isa() in cpu_isas()
    if "avx512" not in cpu_isas():
        with pytest.raises(ValueError, match="this CPU lacks avx512"): set_kernel_isa("avx512")


def test_llama_lit_kernels_isa_at_load():
    "LLAMA_LIT_KERNELS_ISA picks the variant when the library loads; an unknown one is a ValueError from load_kernels."
    code = ("from llama_lit.kernels import load_kernels, kernel_isa\n"
            "try: load_kernels(); print(kernel_isa())\n"
            "except ValueError as e: print('ValueError:', e)\n")
    run = lambda v: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                   env={**os.environ, "LLAMA_LIT_KERNELS_ISA": v}).stdout.strip()
    for isa in cpu_isas(): assert run(isa) == isa
    assert run("avx1024").startswith("ValueError: LLAMA_LIT_KERNELS_ISA='avx1024' is not one of avx2, avx512")
    if "avx512" not in cpu_isas(): assert "this CPU lacks" in run("avx512")


def _same_rounding(x):
    "The C++ rounding of x (M, K) and quantize_activations' agree bit for bit: codes, d, and s = d·Σq (one float32 product)."
    load_kernels()                                              # the op exists once the library is loaded
    q, d, s = torch.ops.llama_lit.quantize_act(x.contiguous())
    rq, rd = quantize_activations(x)
    assert torch.equal(d, rd) and torch.equal(s, rd * rq.float().reshape(*rd.shape, 32).sum(-1))
    return (q != rq).sum().item()


def test_activation_rounding_is_bit_exact():
    x = odd_x(5, 1536)
    x[3, :32] = torch.arange(32) * 0.5 - 8                      # exact halves: rounded to even
    assert _same_rounding(x) == 0


def test_activation_rounding_is_bit_exact_on_the_real_model():
    """The inputs of every KernelLinear in a forward pass of the shipped SmolLM2 GGUF: randn rarely puts x·(127/amax)
    on a code boundary, real activations do. The old reference's `127 / amax` (in torch reciprocal(amax)·127, two
    roundings) made 5 of the 2,644,416 codes of this 27-token prompt differ, 3 of them in blk.0.attn_q's input."""
    from llama_lit.assets import smollm2_path
    import llama_lit.build                                      # noqa: F401  (Llama.build)
    from llama_lit.generation import Llama
    llm = Llama.build(smollm2_path(), max_seq_len=128, max_batch_size=1, quant="gguf", kernels=True)
    seen = []
    grab = lambda mod, args: seen.append(args[0].reshape(-1, mod.in_features).float()) if isinstance(mod, KernelLinear) else None
    text = "The capital of France is Paris. The capital of Italy is Rome. Rivers run to the sea, and the sea gives back rain."
    ids = torch.tensor([llm.tokenizer.encode(text, bos=False, eos=False)])
    with torch.nn.modules.module.register_module_forward_pre_hook(grab), torch.inference_mode():
        llm.forward(ids, 0)
    assert len(seen) == 30 * 4 + 1                              # wq|wk|wv, wo, w1|w3, w2 per layer; the output
    assert seen[0].shape == (ids.shape[1], 576)                 # blk.0.attn_q's input (fused with k, v)
    assert [_same_rounding(x) for x in seen] == [0] * len(seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 5, 46])
@pytest.mark.parametrize("K", [200, 8, 32, 48, 576])
def test_float_kernel(dtype, M, K, isa):
    w, x = torch.randn(131, K).to(dtype), torch.randn(M, K)    # 200: a multiple of 8, not of 16 or 32
    ref = (x.double() @ w.double().T).float()
    assert (float_linear(x, w) - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_float_kernel_rows_do_not_depend_on_their_batch(dtype, isa):
    "A prompt's rows go through 2 or 4 at a time, the rest singly, in one order of sums: each row as if alone."
    w, x = torch.randn(37, 584).to(dtype), torch.randn(11, 584)              # 37: a last tile of one row
    alone = torch.cat([float_linear(x[i : i + 1], w) for i in range(11)])
    assert torch.equal(float_linear(x, w), alone)
    assert torch.equal(float_linear(x[3:8], w), alone[3:8])


@pytest.mark.parametrize("kind", ["q4_1", "q5_0", "q5_1", "q8_0"])
@pytest.mark.parametrize("K", [32, 96, 544, 576, 1536])
def test_a_prompts_rows_have_the_bits_of_each_row_alone(kind, K, isa):
    "With AVX-512 a prompt's tile is unpacked once and read back: each row's result is still the one-row kernel's."
    kl = KernelLinear.from_float(torch.randn(39, K), kind)                  # 39: a last tile of three single rows
    x = torch.randn(13, K)
    alone = torch.cat([kl(x[i : i + 1]) for i in range(13)])
    assert torch.equal(kl(x), alone)


def test_gguf_blocks_regrouped_bit_for_bit():
    w = torch.randn(64, 320) * 0.05
    for T, split in ((QT.Q4_1, split_q4_1_blocks), (QT.Q4_0, split_q4_0_blocks)):
        raw = quantize(w.numpy(), T)
        qs, d, m = split(raw, w.shape)
        got = (unpack_nibbles(qs).float().reshape(64, -1, 32) * d.float()[..., None] + m.float()[..., None]).reshape(w.shape)
        assert torch.equal(got, torch.from_numpy(dequantize(raw, T)))
    raw = quantize(w.numpy(), QT.Q8_0)
    qs, d = split_q8_0_blocks(raw, w.shape)
    assert torch.equal((qs.float().reshape(64, -1, 32) * d.float()[..., None]).reshape(w.shape),
                       torch.from_numpy(dequantize(raw, QT.Q8_0)))


@pytest.mark.parametrize("quant", ["q4_1", "q5_0", "q5_1", "q8_0", "f32", "bf16", "f16"])
def test_kernellinear_matches_its_dequantized_weight(quant, isa):
    torch.manual_seed(0)
    w, x = torch.randn(80, 256) * 0.02, torch.randn(2, 7, 256)
    kl = KernelLinear.from_float(w, quant)
    y, ref = kl(x), F.linear(x, kl.dequantize())
    assert y.shape == (2, 7, 80) and y.dtype == torch.float32
    assert ((y - ref).norm() / ref.norm()) < (1e-2 if quant.startswith("q") else 1e-5)
    assert kl(x.bfloat16()).dtype == torch.bfloat16
    if quant == "q4_1":                                         # chapter 10's int4 codes, the same weights
        from llama_lit.quant import dequantize_int4, quantize_int4
        assert torch.equal(kl.dequantize(), dequantize_int4(*quantize_int4(w)))


@compiles_right
def test_torch_compile_traces_through_the_ops():
    kl = KernelLinear.from_float(torch.randn(64, 128) * 0.02, "q4_1")
    step = lambda x: F.silu(kl(x)) * 2
    x = torch.randn(1, 128)
    with torch.inference_mode():
        got = torch.compile(step, dynamic=False, fullgraph=True)(x)
    assert torch.allclose(got, step(x), atol=1e-6)


def test_bad_input_is_a_valueerror():
    kl = KernelLinear.from_float(torch.randn(64, 128), "q4_1")
    with pytest.raises(ValueError, match="this layer takes 128"): kl(torch.randn(1, 100))
    with pytest.raises(ValueError, match="must be \\(M, 128\\)"): q4_1_linear(torch.randn(1, 96), kl.qs, kl.d, kl.m)
    with pytest.raises(ValueError, match="d must be torch.float16"): q4_1_linear(torch.randn(1, 128), kl.qs, kl.d.float(), kl.m)
    with pytest.raises(ValueError, match="int8 \\(N, K\\)"): q8_0_linear(torch.randn(1, 128), kl.qs, kl.d)
    with pytest.raises(ValueError, match="multiple of 8"): float_linear(torch.randn(1, 12), torch.randn(3, 12))
    with pytest.raises(ValueError, match="unknown quant"): KernelLinear.from_float(torch.randn(4, 32), "q5_k")


def test_real_model_through_the_kernels():
    "SmolLM2's Q4_1 file: every block matrix a Q4_1 KernelLinear; logits close to the dequantized float model's."
    from llama_lit.assets import smollm2_path
    import llama_lit.build                                      # noqa: F401  (Llama.build)
    from llama_lit.generation import Llama
    llm = Llama.build(smollm2_path(), max_seq_len=64, max_batch_size=1, quant="gguf", kernels=True)
    w1 = llm.model.layers[0].feed_forward.w1                     # swapped in for the fairscale layer
    assert isinstance(w1, KernelLinear) and w1.kind == "q4_1" and llm.model.output.kind == "q8_0"
    ref = Llama.build(smollm2_path(), max_seq_len=64, max_batch_size=1, quant="gguf", kernels=False)
    ids = torch.tensor([llm.tokenizer.encode("The capital of France is Paris. The capital of Italy is", bos=False, eos=False)])
    with torch.inference_mode():
        a, b = llm.forward(ids, 0), ref.forward(ids, 0)
    assert a.argmax() == b.argmax()
    assert (a - b).norm() / b.norm() < 0.05                     # int8 vs bfloat16 activations
    out = llm.text_completion(["The capital of France is"], temperature=0.0, max_gen_len=3)[0]["generation"]
    assert "Paris" in out, out


def test_quantize_model_with_kernels_on_the_shipped_model():
    import llama_lit.build                                      # noqa: F401  (Llama.build)
    from llama_lit.generation import Llama
    llm = Llama.build(max_seq_len=64, max_batch_size=1, quant="int4", kernels=True)
    assert llm.model.layers[0].attention.wq.kind == "q4_1" and llm.model.output.kind == "q8_0"


def test_fallback_when_they_cannot_build(tmp_path):
    "LLAMA_LIT_KERNELS=0: kernels=None warns and uses torch's kernels; kernels=True is a RuntimeError saying why."
    code = ("import warnings, torch\n"
            "import llama_lit.build\n"
            "from llama_lit.generation import Llama\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    llm = Llama.build(max_seq_len=32, max_batch_size=1, quant='int8')\n"
            "print(type(llm.model.output).__name__, any('LLAMA_LIT_KERNELS=0' in str(x.message) for x in w))\n"
            "try: Llama.build(max_seq_len=32, max_batch_size=1, quant='int8', kernels=True)\n"
            "except RuntimeError as e: print('RuntimeError:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LLAMA_LIT_KERNELS": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "QuantLinear True", r.stdout
    assert "RuntimeError: llama_lit's CPU kernels are unavailable: LLAMA_LIT_KERNELS=0 turns them off" in r.stdout


def test_cli_kernels_flag():
    for flag in ("on", "off"):
        r = subprocess.run([sys.executable, "-m", "llama_lit", "generate", "ROMEO:", "--quant", "int4", "--kernels", flag,
                            "--max-gen-len", "4", "--temperature", "0"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr


@compiles_right
def test_fast_path_fuses_the_kernels_and_agrees():
    """FastForward runs wq|wk|wv and w1|w3 as one kernel call each: the same tokens and logits, bit for bit, as one call
    per matrix (the C++ step joining their outputs); its compiled decode step gives the C++ step's logits closely. (Against the reference path of chapters 03-05
    only closely: int8 activations turn a float rounding difference into a different integer now and then.)"""
    from llama_lit.build import fast_forward, quantize_for_kernels
    from llama_lit.config import ModelArgs
    from llama_lit.fast import FastForward
    from llama_lit.generation import Llama
    from llama_lit.model import Transformer
    from llama_lit.parallel import init_model_parallel
    from test_fast import NoStop, prompts
    init_model_parallel()
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=128, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=512, multiple_of=32,
                                  max_batch_size=4, max_seq_len=64)).eval()
    quantize_for_kernels(model, "int4")
    calls = []                                                  # every KernelLinear call, fused or not
    count = lambda mod, args: calls.append(1) if isinstance(mod, KernelLinear) else None
    ff = fast_forward(model, kernels=True)
    one_each = FastForward(model, step=ff.step)                  # the same C++ decode step (ch. 11c), one slot each
    with torch.nn.modules.module.register_module_forward_pre_hook(count), torch.inference_mode():
        ff(torch.tensor([prompts()[1]]), 0); fused_calls = len(calls); calls.clear()
        one_each(torch.tensor([prompts()[1]]), 0)
    assert (fused_calls, len(calls)) == (3 * 4 + 1, 3 * 7 + 1)   # wq|wk|wv, wo, w1|w3, w2 per layer, the output
    fused = Llama(model, NoStop(), forward=ff).generate(prompts(), 24, temperature=0)[0]
    assert Llama(model, NoStop(), forward=one_each).generate(prompts(), 24, temperature=0)[0] == fused
    ids = torch.tensor([prompts()[1]])
    with torch.inference_mode():
        ref = model(ids, 0, use_cache=False)[:, -1:]
        eager = fast_forward(model, kernels=True)
        assert ((eager(ids, 0) - ref).norm() / ref.norm()) < 1e-3
        step = eager(ids[:, -1:], ids.shape[1])             # one decode step, then the same step compiled
        compiled = fast_forward(model, compile=True, kernels=True)(ids[:, -1:], ids.shape[1])
    assert ((compiled - step).norm() / step.norm()) < 1e-3


_FAKE_CUDA = r"""
import sys
sys.path.insert(0, sys.argv[1])
import fake_cuda
fake_cuda.build_guard(); fake_cuda.fake_torch_cuda(); fake_cuda.fake_swap_tensors()
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from llama_lit.kernels import KernelLinear
from llama_lit.build import quantize_for_kernels
from llama_lit.config import ModelArgs
from llama_lit.parallel import init_model_parallel
from llama_lit.model import Transformer
init_model_parallel()
kl = KernelLinear.from_float(torch.randn(64, 128), "q4_1")
with FakeTensorMode(allow_non_fake_inputs=True):
    for name, f in (("weights", lambda: KernelLinear.from_float(torch.empty(64, 128, device="cuda"), "q4_1")),
                    ("input", lambda: kl(torch.empty(1, 128, device="cuda"))),
                    ("model", lambda: quantize_for_kernels(Transformer(ModelArgs(dim=128, n_layers=1, n_heads=4,
                                    vocab_size=256, multiple_of=32, max_batch_size=1, max_seq_len=16)).to("cuda"),
                                    "int4"))):
        try: f(); print(name, "ACCEPTED")
        except ValueError as e: print(name, "ValueError:", e)
"""


def test_kernellinear_refuses_cuda():
    "Chapter 11's kernels are CPU code: CUDA weights or inputs get a ValueError that names the way out (fake CUDA, no GPU)."
    from pathlib import Path
    p = subprocess.run([sys.executable, "-c", _FAKE_CUDA, str(Path(__file__).parent)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = dict(l.split(" ", 1) for l in p.stdout.splitlines() if l.split(" ", 1)[0] in ("weights", "input", "model"))
    assert set(lines) == {"weights", "input", "model"}, p.stderr[-2000:]
    assert lines["weights"].startswith("ValueError") and "QuantLinear" in lines["weights"] and "cuda" in lines["weights"]
    assert lines["input"].startswith("ValueError") and "runs on the CPU" in lines["input"]
    assert lines["model"].startswith("ValueError") and "kernels=False" in lines["model"]


def test_build_only_with_the_flags_it_compiles_for(monkeypatch):
    "The AVX2 build is tried only where the CPU lists avx2, fma and f16c; an AVX-512 CPU lists them and gets it too."
    from llama_lit import kernels
    avx512 = "flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16\n"
    avx_only = "flags\t\t: fpu sse2 avx f16c\n"
    assert {f for f in kernels._CFLAGS if f.startswith("-m")} == {"-mavx2", "-mfma", "-mf16c"}
    assert kernels._has_avx2(avx512) and not kernels._has_avx2(avx_only) and not kernels._has_avx2("processor : 0\n")
    assert kernels._has_avx2() and kernels_available()          # this machine (the module runs only where they build)
    monkeypatch.setattr(kernels, "_has_avx2", lambda cpuinfo=None: False)
    assert "AVX2, FMA and F16C" in kernels.kernels_unavailable_reason()


def test_a_decode_step_reads_96_4_mb():
    "Chapter 11's bound: SmolLM2's 210 Q4_1 matrices and its Q8_0 output are 96.4 MB, and the KernelLinears hold exactly those bytes."
    from llama_lit.assets import smollm2_path
    from llama_lit.gguf_file import open_gguf
    mats = [t for t in open_gguf(smollm2_path()).tensors if len(t.shape) == 2]
    assert sorted(t.tensor_type.name for t in mats).count("Q4_1") == 210 and [t.name for t in mats if t.tensor_type == QT.Q8_0] == ["token_embd.weight"]
    file_bytes = sum(int(t.n_bytes) for t in mats)
    assert round(file_bytes / 1e6, 1) == 96.4
    assert sum(kernel_qlinear(t).nbytes for t in mats) == file_bytes


def test_q5_matrices_stay_packed(tmp_path):
    "kernel_qlinear keeps a GGUF file's Q5_0 / Q5_1 matrices as their blocks: the file's bytes, not float32."
    from gguf import GGUFWriter
    from llama_lit.gguf_file import open_gguf
    w = torch.randn(40, 576) * 0.05
    writer = GGUFWriter(str(tmp_path / "q5.gguf"), "llama")
    for T in (QT.Q5_0, QT.Q5_1): writer.add_tensor(T.name, quantize(w.numpy(), T), raw_dtype=T)
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    x = torch.randn(3, 576)
    for t in open_gguf(tmp_path / "q5.gguf").tensors:
        kl = kernel_qlinear(t)
        assert kl.kind == t.name.lower() and kl.nbytes == int(t.n_bytes) and (kl.out_features, kl.in_features) == (40, 576)
        ref = reference_block_linear(x, torch.from_numpy(dequantize(quantize(w.numpy(), t.tensor_type), t.tensor_type)))
        assert (kl(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_the_kernels_compile_from_the_shipped_cpp():
    "The C++ is files of the package (llama_lit/csrc: every .cpp there is compiled), not a string written at run time."
    from llama_lit import kernels
    csrc = Path(kernels.__file__).resolve().parent / "csrc"
    assert KERNEL_SOURCES == sorted(csrc.glob("*.cpp")) and csrc / "kernels.cpp" in KERNEL_SOURCES
    assert CHAPTER_CPP == [csrc / "isa.h", csrc / "kernels.cpp"] and CSRC_DIR == csrc
    assert all(p.is_file() for p in KERNEL_SOURCES)
    assert not (kernels.kernel_build_dir() / "kernels.cpp").exists()      # compiled where it lies, not copied


def _shown_sections():
    "The section names chapter 11 shows (its `show_cpp(\"name\")` cells) in order, with the outputs those cells keep."
    nb = next((ROOT / "nbs").glob("11_*.ipynb"))
    for c in json.loads(nb.read_text())["cells"]:
        if c["cell_type"] != "code": continue
        for name in re.findall(r'show_cpp\("(\w+)"\)', "".join(c["source"])):
            yield name, ["".join(o.get("data", {}).get("text/markdown", "")) for o in c.get("outputs", [])]


def test_the_sections_are_the_whole_file_and_the_chapter_shows_each_once_in_order():
    sections = cpp_sections()
    text = "".join(p.read_text() for p in CHAPTER_CPP)                 # isa.h, then kernels.cpp
    assert "".join(f"// ---- section: {n} ----\n{t}" for n, t in sections.items()) == text
    shown = list(_shown_sections())
    assert [n for n, _ in shown] == list(sections)
    for name, outputs in shown:                                 # a kept output is the file's text as it is now
        assert all(o == f"```cpp\n{cpp_section(name).strip(chr(10))}\n```" for o in outputs if o), name
    with pytest.raises(KeyError, match="no C\\+\\+ section 'nope'"): cpp_section("nope")


def test_a_compile_error_names_the_file_and_line(tmp_path, monkeypatch):
    from llama_lit import kernels
    bad = tmp_path / "kernels.cpp"
    bad.write_text("#error a deliberate mistake\n" + KERNEL_SOURCES[0].read_text())   # stops before any header
    monkeypatch.setattr(kernels, "KERNEL_SOURCES", [bad])
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    with pytest.raises(RuntimeError) as e: kernels.load_kernels()
    assert "llama_lit's CPU kernels are unavailable: building them failed" in str(e.value)
    assert f"{bad}:1:2: error: #error a deliberate mistake" in str(e.value)


def test_float_kernel_shares_the_layers_own_weight():
    from torch import nn
    lin, x = nn.Linear(64, 24, bias=False), torch.randn(3, 64)
    kl = float_kernel(lin)
    assert isinstance(kl, KernelLinear) and kl.kind == "float" and kl.weight.data_ptr() == lin.weight.data_ptr()
    with torch.no_grad(): lin.weight.mul_(-2)
    assert torch.allclose(kl(x), lin(x), atol=1e-5)
    assert float_kernel(lin.bfloat16()).weight.dtype == torch.bfloat16
    for m in (nn.Linear(64, 24), nn.Linear(12, 4, bias=False), kl, nn.Linear(64, 8, bias=False).double()):
        assert float_kernel(m) is None                          # a bias, K % 8, not a plain layer, float64


def test_fuse_rows_views_the_fused_buffer():
    a, b = KernelLinear.from_float(torch.randn(48, 64), "q8_0"), KernelLinear.from_float(torch.randn(16, 64), "q8_0")
    x = torch.randn(2, 64)
    want = torch.cat([a(x), b(x)], -1)
    ab = fuse_rows([a, b])
    assert torch.equal(ab(x), want) and a.qs.data_ptr() == ab.qs.data_ptr() and torch.equal(b(x), want[:, 48:])
    with pytest.raises(ValueError, match="one kind"): fuse_rows([a, KernelLinear.from_float(torch.randn(8, 64), "f32")])
