"""Chapter 11c's C++ decode step against chapter 07's eager step on the same model and caches, for every kind of
matrix the kernels run (Q4_1, Q5_0, Q5_1, Q8_0, float32/bfloat16, Q4_K, Q5_K, Q6_K), under each kernel variant this
CPU has; its operators against torch's; what it cannot run refused with the reason."""
import pytest
import torch
import torch.nn.functional as F

from llama_lit.build import fast_forward
from llama_lit.config import ModelArgs
from llama_lit.fast import FastForward, apply_rotary_real, rope_tables
from llama_lit.generation import Llama
from llama_lit.kernels import KernelLinear, cpu_isas, kernel_isa, kernels_available, set_kernel_isa
from llama_lit.kquants import KQuantLinear
from llama_lit.model import Transformer
from llama_lit.quant import quant_linears, swap_linears

pytestmark = pytest.mark.skipif(not kernels_available(), reason="the CPU kernels do not build here")
if kernels_available(): from llama_lit import step as cstep
from test_kquants import rand_blocks                                   # random valid K-quant bytes


class NoStop:
    eos_id, pad_id, stop_tokens, n_words = -1, -1, [], 1 << 30


def matrix(kind, w, seed):
    "A kernel module of `kind` for the float weight w (K-quants: random blocks of w's shape)."
    if kind in ("q4_k", "q5_k", "q6_k"): return KQuantLinear(kind, *w.shape, rand_blocks(kind, *w.shape, seed))
    return KernelLinear.from_float(w, kind)


def tiny(kind):
    "A 2-layer model (dim 256: whole K-quant super-blocks) with every matrix a kernel module of `kind`."
    torch.manual_seed(0)
    args = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, multiple_of=256,
                     max_batch_size=3, max_seq_len=64)
    model = Transformer(args).eval()
    swap_linears(model, {n: matrix(kind, m.weight, i) for i, (n, m) in enumerate(quant_linears(model).items())})
    return model


def forced(f, tokens, n_prompt):
    "Logits (bsz, steps, vocab) of each single-token step after a prompt of n_prompt, fed `tokens` (bsz, S)."
    with torch.inference_mode():
        f(tokens[:, :n_prompt], 0)
        return torch.cat([f(tokens[:, i : i + 1], i) for i in range(n_prompt, tokens.shape[1])], 1)


KINDS = ["q4_1", "q5_0", "q5_1", "q8_0", "f32", "bf16", "q4_k", "q5_k", "q6_k"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("isa", cpu_isas())
def test_step_matches_the_eager_step(kind, isa):
    was = set_kernel_isa(isa)
    try:
        model = tiny(kind)
        f = fast_forward(model, kernels=True)
        assert isinstance(f.step, cstep.CppStep), cstep.step_unsupported(f)
        tokens = torch.randint(0, 320, (3, 20), generator=torch.Generator().manual_seed(1))
        cpp = forced(f, tokens, 8)
        step, f.step = f.step, None
        eager = forced(f, tokens, 8)
        f.step = step
        tol = 1e-4 if kind == "f32" else 2e-3 if kind == "bf16" else 0.05    # int8 activations amplify last bits
        torch.testing.assert_close(cpp, eager, atol=tol * eager.abs().max().item(), rtol=0)
        prompts = [t.tolist() for t in tokens[:, :5]] + [tokens[0, :9].tolist()]
        gen = lambda: Llama(model, NoStop(), forward=f).generate(prompts[1:], 10, temperature=0)[0]
        with_step = gen()                                             # a ragged batch through Llama.generate
        assert [len(t) for t in with_step] == [10] * 3 and gen() == with_step
        f.step = None
        if kind in ("f32", "bf16"): assert gen() == with_step         # float matrices: the eager step's tokens
        # (quantized: a random model's near ties go either way under int8 activations; the logits are checked above)
    finally:
        set_kernel_isa(was)


def test_the_step_follows_caches_that_moved():
    model = tiny("q8_0")
    f = fast_forward(model, kernels=True)
    tokens = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(2))
    first = forced(f, tokens, 6)
    for layer in model.layers:                                         # new cache tensors: FastForward re-reads them
        a = layer.attention
        a.cache_k, a.cache_v = torch.zeros_like(a.cache_k), torch.zeros_like(a.cache_v)
    again = forced(f, tokens, 6)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert f.step.lists(f)["caches"][0].data_ptr() == model.layers[0].attention.cache_k.data_ptr()


def test_operators_against_torch():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 192, generator=g), torch.rand(192, generator=g) + 0.5
    torch.testing.assert_close(cstep.rms_norm(x, w, 1e-6), F.rms_norm(x, (192,), w, 1e-6), atol=1e-5, rtol=1e-5)
    gu = torch.randn(4, 2, 64, generator=g) * 4
    gate, up = gu.chunk(2, -1)
    assert torch.equal(cstep.silu_mul(gate, up), F.silu(gate) * up)                  # torch's own bits
    assert torch.equal(cstep.silu_mul(gate.clone(), up.clone()), F.silu(gate) * up)
    cos, sin = rope_tables(torch.polar(torch.ones(64, 16), torch.rand(64, 16, generator=g) * 6))
    xr = torch.randn(3, 5, 32, generator=g)
    for pos in (0, 9, 63):
        want = apply_rotary_real(xr[:, None], cos[pos : pos + 1], sin[pos : pos + 1])[:, 0]
        assert torch.equal(cstep.rope(xr, cos[pos], sin[pos]), want)
    q, k, v = torch.randn(2, 6, 32, generator=g), torch.randn(2, 2, 30, 32, generator=g), torch.randn(2, 2, 30, 32, generator=g)
    got = cstep.decode_attention(q, k, v, torch.tensor([30, 3]))
    for r, n in enumerate((30, 3)):
        want = F.scaled_dot_product_attention(q[r, :, None], k[r, :, :n], v[r, :, :n], enable_gqa=True)[:, 0]
        torch.testing.assert_close(got[r], want, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_value_errors():
    x, w = torch.randn(2, 64), torch.ones(64)
    with pytest.raises(ValueError, match="float32 CPU tensor"): cstep.rms_norm(x.half(), w, 1e-5)
    with pytest.raises(ValueError, match="w has 63 values"): cstep.rms_norm(x, w[:63], 1e-5)
    with pytest.raises(ValueError, match="differ"): cstep.silu_mul(x, x[:, :3])
    with pytest.raises(ValueError, match="even head_dim"): cstep.rope(torch.randn(1, 2, 8), torch.ones(3), torch.ones(3))
    q, k = torch.randn(1, 4, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="in 1..5"): cstep.decode_attention(q, k, k, [6])
    with pytest.raises(ValueError, match="in 1..5"): cstep.decode_attention(q, k, k, [0])
    with pytest.raises(ValueError, match="dividing n_heads"): cstep.decode_attention(torch.randn(1, 3, 8), k, k, [2])
    with pytest.raises(ValueError, match="has no CPU kernel"): cstep.kernel_args(torch.nn.Linear(4, 4))


def test_what_the_step_cannot_run_is_left_to_torch():
    model = tiny("q8_0")
    assert "split over processes" in cstep.step_unsupported(FastForward(model, plain_linear=False))
    assert "sdpa=False" in cstep.step_unsupported(FastForward(model, sdpa=False))
    plain = Transformer(model.params).eval()                          # torch's nn matrices: no kernel to call
    assert "has no CPU kernel" in cstep.step_unsupported(FastForward(plain))
    assert cstep.cpp_step(FastForward(plain.to(torch.bfloat16))) is None
    assert fast_forward(tiny("q4_1"), compile=True, kernels=True).step is None   # compile=True: torch.compile's step


@pytest.mark.parametrize("script, args", [("decode_step.py", ["--rounds", "1", "--steps", "2", "--greedy", "4"]),
                                          ("float_kernel.py", ["--rounds", "1", "--dtypes", "bf16"])])
def test_the_benchmarks_run(script, args):
    "bench/decode_step.py and bench/float_kernel.py end to end, tiny settings: a smoke test, not a timing."
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / script), *args], capture_output=True, text=True,
                       timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("C++ step speed-up over eager:" if script == "decode_step.py" else "bf16") in r.stdout
