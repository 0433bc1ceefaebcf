"""Quantization (chapter 10): every quantized path against its own dequantized float weights (tight tolerances, no
timings); int4 = GGUF's Q4_1 and our Q8_0 = llama.cpp's, byte for byte; GGUF Q4_1/Q4_0/Q8_0/F16/BF16/F32 tensors
repacked for torch's kernels give exactly gguf.quants.dequantize's weights (synthetic blocks and real SmolLM2
tensors); quantize_model end to end on a tiny random model (reference path and FastForward, the QuantLinears
swapped in as modules); bad input -> ValueError."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFWriter
from gguf.quants import dequantize, quantize

from llama_lit.assets import smollm2_path
from llama_lit.build import build_transformer, load_gguf_quantized, quantized_transformer
from llama_lit.config import ModelArgs
from llama_lit.fast import FastForward
from llama_lit.gguf import BLOCK_DTYPES, dequantize_tensor, load_gguf
from llama_lit.gguf_file import open_gguf, torch_shape
from llama_lit.model import Transformer
from llama_lit.parallel import init_model_parallel
from llama_lit.tokenizer import Tokenizer
from llama_lit.quant import (QuantLinear, bits_per_weight, cpu_has_bf16, dequantize_int4, dequantize_int8,
                             gguf_qlinear, int4_scales_and_zeros, matmul_shapes, pack_int4, q4_0_blocks_to_int4pack,
                             q4_1_blocks, q4_1_blocks_to_int4pack, q4_1_bytes, q8_0_blocks_to_int8, q8_0_bytes,
                             q4_k_blocks, q4_k_blocks_to_int4pack, q8_0_to_int4pack, quant_linears, quantize_int4,
                             quantize_int8, quantize_model, quantize_q8_0, swap_linears, unpack_int4)

torch.set_num_threads(1)


def kernel_weights(packed, table, out_f, in_f, group_size=32):
    "The float32 weights (out, in) torch's int4 kernel multiplies by: an identity input returns them."
    return torch.ops.aten._weight_int4pack_mm_for_cpu(torch.eye(in_f), packed, group_size, table.float()).T[:out_f]


# ---------------------------------------------------------------- kernels against dequantized weights

@pytest.mark.parametrize("quant", ["int8", "int4", "q8_0", "bf16", "f16", "f32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantlinear_matches_its_dequantized_weight(quant, dtype):
    torch.manual_seed(0)
    w, x = torch.randn(112, 192) * 0.02, torch.randn(3, 5, 192)      # 112 rows: padded to 128 for int4
    ql = QuantLinear.from_float(w, quant, dtype=dtype)
    y = ql(x)
    assert y.shape == (3, 5, 112) and y.dtype == torch.float32
    ref = F.linear(x.to(ql.dtype).float(), ql.dequantize())
    tol = 1e-5 if ql.dtype == torch.float32 else 1e-2                  # one rounding of the result to 16 bits
    assert (y - ref).abs().max() <= tol * ref.abs().max()
    assert ql(x.bfloat16()).dtype == torch.bfloat16                     # the caller's dtype comes back


def test_dequantize_reads_the_kernel_layout():
    "QuantLinear.dequantize (unpack_int4 of the packed codes) equals the weights the kernel itself uses."
    torch.manual_seed(1)
    for quant in ("int4", "q8_0"):
        ql = QuantLinear.from_float(torch.randn(96, 128), quant, dtype=torch.float32)
        in_f = 128 if quant == "int4" else 256
        w = kernel_weights(ql.packed, ql.scales_and_zeros, 96, in_f)
        if quant == "q8_0": w = w[:, :128] + w[:, 128:]
        assert torch.equal(ql.dequantize(), w)
    codes = torch.randint(0, 16, (64, 96), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)


def test_int4_kernel_convention():
    "_weight_int4pack_mm_for_cpu's weight is (q - 8) * scale + zero; Q4_1's d*q + m maps to scale d, zero m + 8d."
    q = torch.arange(16, dtype=torch.uint8).repeat(32, 2)                 # (32, 32): every code in every row
    table = torch.tensor([2.0, 0.5]).expand(1, 32, 2).contiguous()
    assert torch.equal(kernel_weights(pack_int4(q), table, 32, 32)[0, :16], 2 * (torch.arange(16.0) - 8) + 0.5)
    d, m = torch.tensor([[0.25]], dtype=torch.float16), torch.tensor([[-1.5]], dtype=torch.float16)
    assert torch.equal(int4_scales_and_zeros(d, m)[0, 0], torch.tensor([0.25, -1.5 + 8 * 0.25]))
    assert torch.equal(int4_scales_and_zeros(d)[0, 0], torch.tensor([0.25, 0.0]))


def test_int8_quantizer():
    torch.manual_seed(2)
    w = torch.randn(40, 64)
    w[3] = 0                                                              # an all-zero row: scale 0, no NaN
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (40,) and s[3] == 0 and (q[3] == 0).all()
    assert ((w - dequantize_int8(q, s)).abs() <= s[:, None] / 2 * (1 + 1e-6)).all()
    x = torch.randn(4, 64)
    assert torch.allclose(torch.ops.aten._weight_int8pack_mm(x, q, s), F.linear(x, dequantize_int8(q, s)), atol=1e-5)


def test_int4_is_q4_1_and_q8_0_is_llama_cpps():
    "quantize_int4 writes GGUF's Q4_1 bytes and quantize_q8_0 its Q8_0 bytes (gguf.quants = llama.cpp's reference)."
    w = (torch.randn(48, 256) * 0.03 + 0.01).numpy()
    q, d, m = quantize_int4(torch.from_numpy(w))
    assert np.array_equal(q4_1_bytes(q, d, m), quantize(w, QT.Q4_1))
    assert np.array_equal(q8_0_bytes(*quantize_q8_0(torch.from_numpy(w))), quantize(w, QT.Q8_0))
    assert torch.equal(dequantize_int4(q, d, m), torch.from_numpy(dequantize(quantize(w, QT.Q4_1), QT.Q4_1)))
    back = q4_1_blocks(q4_1_bytes(q, d, m), (48, 256))                       # and back: the same codes and scales
    assert all(torch.equal(a, b) for a, b in zip(back, (q, d, m)))
    with pytest.raises(ValueError, match="group size 32"): q4_1_bytes(*quantize_int4(torch.from_numpy(w), 64))


# ---------------------------------------------------------------- GGUF blocks repacked, exactly

@pytest.mark.parametrize("rows", [48, 64, 100])
def test_gguf_blocks_repacked_exactly(rows):
    rng = np.random.default_rng(rows)
    w = (rng.standard_normal((rows, 160)) * 0.05 + rng.standard_normal((rows, 1)) * 0.02).astype(np.float32)
    for qt, repack in ((QT.Q4_1, q4_1_blocks_to_int4pack), (QT.Q4_0, q4_0_blocks_to_int4pack)):
        raw = quantize(w, qt)
        packed, table = repack(raw, (rows, 160))
        assert packed.dtype == torch.uint8 and packed.shape[0] % 32 == 0 and table.dtype == torch.float32
        assert torch.equal(kernel_weights(packed, table, rows, 160), torch.from_numpy(dequantize(raw, qt)))
    raw = quantize(w, QT.Q8_0)
    q, d = q8_0_blocks_to_int8(raw, (rows, 160))
    assert q.dtype == torch.int8 and d.dtype == torch.float16 and d.shape == (rows, 5)
    packed, table = q8_0_to_int4pack(q, d)
    w2 = kernel_weights(packed, table, rows, 320)
    assert torch.equal(w2[:, :160] + w2[:, 160:], torch.from_numpy(dequantize(raw, QT.Q8_0)))


def test_q8_0_extremes_exact():
    "Codes -128 and 127 and tiny/large float16 scales survive the two-nibble split."
    q = torch.tensor([[-128, 127, 0, -1] * 8, [1, -127, 5, 64] * 8], dtype=torch.int8)
    d = torch.tensor([[6e-5], [3000.0]], dtype=torch.float16)
    ql = QuantLinear.from_q8_0(q, d, dtype=torch.float32)
    assert torch.equal(ql.dequantize(), q.float() * d.float())


def _tiny_gguf(path, types: dict):
    "A file with 2-D tensors of the given ggml types (written by gguf's own GGUFWriter)."
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, "llama")
    ref = {}
    for name, qt in types.items():
        a = (rng.standard_normal((64, 96)) * 0.05).astype(np.float32)
        if qt in (QT.F32, QT.F16): data = a.astype(np.float32 if qt == QT.F32 else np.float16); back = data
        else: data = quantize(a, qt); back = dequantize(data, qt)
        w.add_tensor(name, data, raw_dtype=None if qt in (QT.F32, QT.F16) else qt)
        ref[name] = torch.from_numpy(np.asarray(back, dtype=np.float32).reshape(64, 96))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return ref


def test_gguf_qlinear_every_type(tmp_path):
    types = {"a.weight": QT.Q4_1, "b.weight": QT.Q4_0, "c.weight": QT.Q8_0, "d.weight": QT.F16, "e.weight": QT.BF16,
             "f.weight": QT.F32, "g.weight": QT.Q5_1}
    ref = _tiny_gguf(tmp_path / "t.gguf", types)
    f = open_gguf(tmp_path / "t.gguf")
    kinds = {}
    for t in f.tensors:
        if t.name == "g.weight":                                          # Q5_1: dequantized, said so
            with pytest.warns(UserWarning, match="g.weight: Q5_1 has no packed form"):
                ql = gguf_qlinear(t, dtype=torch.float32)
        else: ql = gguf_qlinear(t, dtype=torch.float32)
        kinds[t.name] = (ql.kind, ql.dtype)
        assert torch.equal(ql.dequantize(), ref[t.name]), t.name
        x = torch.randn(2, 96)
        want = F.linear(x.to(ql.dtype).float(), ref[t.name])             # F16/BF16 kept: they compute in 16 bits
        tol = 1e-5 if ql.dtype == torch.float32 else 1e-2
        assert (ql(x) - want).abs().max() <= tol * want.abs().max()
    assert kinds == {"a.weight": ("int4", torch.float32), "b.weight": ("int4", torch.float32),
                     "c.weight": ("q8_0_int4x2", torch.float32), "d.weight": ("float", torch.float16),
                     "e.weight": ("float", torch.bfloat16), "f.weight": ("float", torch.float32),
                     "g.weight": ("float", torch.float32)}                # Q5_1: no kernel, dequantized to the dtype
    t = next(t for t in f.tensors if t.name == "g.weight")
    assert gguf_qlinear(t, other="int4").kind == "int4"
    with pytest.raises(ValueError, match="other="): gguf_qlinear(t, other="int3")
    c = next(t for t in f.tensors if t.name == "c.weight")
    assert gguf_qlinear(c, q8_0="int8").kind == "int8"
    with pytest.raises(ValueError, match="q8_0="):
        gguf_qlinear(c, q8_0="int16")


@pytest.fixture(scope="module")
def smol():
    try: return open_gguf(smollm2_path())
    except FileNotFoundError as e: pytest.skip(str(e))


def test_real_smollm2_tensors_exact(smol):
    tensors = {t.name: t for t in smol.tensors}
    for name in ("blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.17.ffn_down.weight", "blk.29.ffn_gate.weight"):
        t = tensors[name]
        ql = gguf_qlinear(t, dtype=torch.float32)
        ref = torch.from_numpy(dequantize(t.data, t.tensor_type))
        assert ql.kind == "int4" and torch.equal(ql.dequantize(), ref)
        packed, table = q4_1_blocks_to_int4pack(t.data, torch_shape(t))
        assert torch.equal(kernel_weights(packed, table, *ref.shape), ref)
        x = torch.randn(3, ref.shape[1])
        assert torch.allclose(ql(x), F.linear(x, ref), rtol=0, atol=1e-5 * F.linear(x, ref).abs().max())
    t = tensors["token_embd.weight"]                                    # Q8_0, the tied output matrix
    rows = t.data[:256]                                                 # 256 tokens' rows are enough
    q, d = q8_0_blocks_to_int8(rows, (256, 576))
    ql = QuantLinear.from_q8_0(q, d, dtype=torch.float32)
    assert torch.equal(ql.dequantize(), torch.from_numpy(dequantize(rows, t.tensor_type)))


def test_real_smollm2_default_dtype_rounds_only_the_scales(smol):
    """The default (bfloat16) compute dtype keeps the file's codes but rounds the kernel's table (d, m + 8d) to bfloat16:
    the weights it multiplies by are exactly (q - 8)·bf16(d) + bf16(m + 8d), not the file's (chapter 10 says so and
    prints by how much); each scale is off by at most 2^-8 of itself (bfloat16's unit roundoff)."""
    tensors = {t.name: t for t in smol.tensors}
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_gate.weight"):
        t = tensors[name]
        ql = gguf_qlinear(t)                                            # the default: bfloat16
        assert ql.dtype == torch.bfloat16
        q, d, m = q4_1_blocks(t.data, torch_shape(t))
        scale, zero = d.float(), m.float() + 8 * d.float()              # (out, in/32) each, exact in float32
        bs, bz = scale.bfloat16().float(), zero.bfloat16().float()
        assert ((bs - scale).abs() <= 2 ** -8 * scale.abs()).all() and ((bz - zero).abs() <= 2 ** -8 * zero.abs()).all()
        want = ((q.float().unflatten(1, (-1, 32)) - 8) * bs[..., None] + bz[..., None]).flatten(1)
        got, ref = ql.dequantize(), torch.from_numpy(dequantize(t.data, t.tensor_type))
        assert torch.equal(got, want)                                   # codes as stored, scales rounded, nothing else
        assert (got != ref).float().mean() > 0.5                        # so not "the file's bits" in bfloat16
        bound = 2 ** -8 * (8 * scale.abs() + zero.abs())                # |(q-8)·δd + δz| per block
        assert ((got - ref).abs().unflatten(1, (-1, 32)) <= bound[..., None] * (1 + 1e-6)).all()
        x = torch.randn(3, ref.shape[1])
        y = F.linear(x.bfloat16().float(), want)
        assert torch.allclose(ql(x), y, rtol=0, atol=1e-2 * y.abs().max())
        assert torch.equal(gguf_qlinear(t, dtype=torch.float32).dequantize(), ref)   # float32: exact


# ---------------------------------------------------------------- whole models

def _tiny_model(seed=0, sharp=False):
    """A random 2-layer model; sharp: the output matrix is the embedding with its rows permuted, so after token t the
    model predicts perm[t] by a wide margin (greedy walks the permutation), with the blocks' outputs added on top."""
    init_model_parallel()
    torch.manual_seed(seed)
    args = ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                     max_batch_size=2, max_seq_len=32)
    model = Transformer(args).eval()
    if sharp:
        with torch.no_grad():
            perm = torch.randperm(256)
            model.output.weight.copy_(model.tok_embeddings.weight[torch.argsort(perm)] * 4)   # row perm[t] = embedding t
            model.perm = perm
    return model


def _greedy(forward, prompt, n):
    tokens, out = torch.tensor([prompt]), []
    logits = forward(tokens, 0)
    for i in range(n):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        logits = forward(torch.tensor([[nxt]]), len(prompt) + i)
    return out


@pytest.mark.parametrize("quant,tol", [("int8", 0.02), ("int4", 0.15)])
def test_quantize_model_end_to_end(quant, tol):
    model = _tiny_model()
    qmodel = quantize_model(copy.deepcopy(model), quant, dtype=torch.float32)
    tokens = torch.randint(0, 256, (2, 12))
    with torch.inference_mode():
        ref, out = model(tokens, 0, use_cache=False), qmodel(tokens, 0, use_cache=False)
    # logits within tol of float32, relative to their spread (int8: 2%, int4 with groups of 32: 15%)
    assert (out - ref).abs().max() <= tol * ref.abs().max()
    # and exactly the float model whose weights are the dequantized ones
    deq = copy.deepcopy(model)
    for name, layer in quant_linears(deq).items():
        layer.weight = torch.nn.Parameter(qmodel.get_submodule(name).dequantize(), requires_grad=False)
    with torch.inference_mode(): assert torch.allclose(out, deq(tokens, 0, use_cache=False), atol=1e-4, rtol=1e-4)
    assert quant_linears(qmodel) == {}                                  # no fairscale linear left: all swapped
    assert all(isinstance(qmodel.get_submodule(n), QuantLinear) for n in quant_linears(model))
    assert "QuantLinear(" in str(qmodel)                                 # print(model) shows them


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_greedy_tokens_equal_on_a_sharp_model(quant):
    model = _tiny_model(seed=3, sharp=True)
    prompt = [5, 17, 99, 3, 42]
    with torch.inference_mode():
        want = _greedy(lambda t, p: model(t, p), prompt, 10)
        assert want[1:] == model.perm[torch.tensor(want[:-1])].tolist()      # it is as sharp as built
        qmodel = quantize_model(copy.deepcopy(model), quant)               # bfloat16 kernels, as it would run
        assert _greedy(lambda t, p: qmodel(t, p), prompt, 10) == want        # the reference path (ch. 03-05)
        fast = FastForward(quantize_model(copy.deepcopy(model), quant))
        assert _greedy(fast, prompt, 10) == want                            # chapter 07's fast path, modules swapped in


def test_fast_forward_matches_reference_path():
    model = quantize_model(_tiny_model(seed=4), "int4", dtype=torch.float32)
    fast = FastForward(model)
    tokens = torch.randint(0, 256, (1, 9))
    with torch.inference_mode():
        ref = model(tokens, 0, use_cache=False)[:, -1:]
        fast = fast(tokens, 0)
    assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-4)


def test_tied_output_keeps_embedding():
    init_model_parallel()
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_batch_size=1,
                     max_seq_len=16, tie_word_embeddings=True)
    model = Transformer(args).eval()
    emb = model.tok_embeddings.weight
    quantize_model(model, "int8")
    assert model.tok_embeddings.weight is emb and "weight" not in model.output._parameters
    assert isinstance(model.output, QuantLinear) and model.output.out_features == 96


def test_model_dtype_change_keeps_kernel_dtype():
    model = quantize_model(_tiny_model(), "int4")
    model.to(torch.float32)
    assert model.layers[0].attention.wq.dtype == torch.bfloat16
    with torch.inference_mode(): assert model(torch.randint(0, 256, (1, 4)), 0, use_cache=False).dtype == torch.float32


def test_load_gguf_quantized_real_model(smol):
    params, sd, qlayers = load_gguf_quantized(smol, compute_dtype=torch.float32)
    assert set(sd) == {"norm.weight"} | {f"layers.{i}.{n}.weight" for i in range(30)
                                         for n in ("attention_norm", "ffn_norm")}     # the embedding: from its blocks
    assert type(qlayers["tok_embeddings"]).__name__ == "BlockEmbedding"
    assert len(qlayers) == 30 * 7 + 2 and qlayers["output"].kind == "q8_0_int4x2" and qlayers["layers.0.attention.wq"].kind == "int4"
    args = ModelArgs.from_params(params, max_seq_len=64, max_batch_size=1)
    qmodel = quantized_transformer(args, sd, qlayers)
    _, fsd = load_gguf(smol)
    fmodel = build_transformer(args, fsd, device="cpu", dtype=torch.float32)
    tokens = torch.tensor([Tokenizer(smollm2_path()).encode("The capital of France is", bos=False, eos=False)])
    with torch.inference_mode():
        a, b = qmodel(tokens, 0, use_cache=False), fmodel(tokens, 0, use_cache=False)
    assert torch.allclose(a, b, atol=1e-3 * b.abs().max())              # the same weights, float32 arithmetic both
    assert torch.equal(a[0, -1].argmax(), b[0, -1].argmax())


def test_quantized_transformer_allocates_no_float_matrices():
    "quantized_transformer builds on the meta device: besides the caches and the RoPE table it allocates nothing (it used to allocate every float32 matrix, then drop it)."
    from conftest import Allocations
    from llama_lit.attention import kv_cache_bytes
    init_model_parallel()
    args = ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_batch_size=1,
                     max_seq_len=16)
    ref = Transformer(args).eval()
    qlayers = {name: QuantLinear.from_float(m.weight, "int8") for name, m in quant_linears(ref).items()}
    sd = {k: v for k, v in ref.state_dict().items() if not any(k == n + ".weight" for n in qlayers)}
    with Allocations() as a:
        model = quantized_transformer(args, sd, qlayers)
    caches = kv_cache_bytes(args, batch=1, bytes_per_value=4)
    freqs = model.freqs_cis.numel() * model.freqs_cis.element_size()
    matrices = sum(m.weight.numel() * 4 for m in quant_linears(ref).values())
    assert a.bytes.get("cpu", 0) <= caches + 2 * freqs + 4096 < matrices, (a.bytes, caches, freqs, matrices)
    tokens = torch.randint(0, 256, (1, 6))
    with torch.inference_mode():
        want = quantize_model(copy.deepcopy(ref), "int8")(tokens, 0, use_cache=False)
        assert torch.equal(model(tokens, 0, use_cache=False), want)


# ---------------------------------------------------------------- bad input

def test_bad_input():
    model = _tiny_model()
    with pytest.raises(ValueError, match="unknown quant 'int2'"): quantize_model(model, "int2")
    with pytest.raises(ValueError, match="unknown quant 'fp8'"): quantize_model(model, "int8", head="fp8")
    with pytest.raises(ValueError, match="not a multiple of group_size=256"): quantize_model(model, "int4", group_size=256)
    assert all(hasattr(l, "weight") for l in quant_linears(model).values())   # all or nothing: nothing was changed
    with pytest.raises(ValueError, match="group sizes"): quantize_int4(torch.randn(8, 96), group_size=48)
    with pytest.raises(ValueError, match="not a multiple of group_size=32"): quantize_int4(torch.randn(8, 48))
    with pytest.raises(ValueError, match="2-D floating-point"): quantize_int8(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="unknown quant"): QuantLinear.from_float(torch.randn(32, 32), "int3")
    with pytest.raises(ValueError, match="unknown QuantLinear kind"): QuantLinear("int5", 4, 4)
    with pytest.raises(ValueError, match="takes 64"): QuantLinear.from_float(torch.randn(32, 64))(torch.randn(2, 63))
    with pytest.raises(ValueError, match="multiple of 32"): pack_int4(torch.zeros(48, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot hold shape"): q4_1_blocks_to_int4pack(np.zeros(100, np.uint8), (4, 64))
    with pytest.raises(ValueError, match="whole number of 32-weight blocks"): q8_0_blocks_to_int8(np.zeros(34, np.uint8), (1, 33))
    quantize_model(model, "int8")
    with pytest.raises(ValueError, match="quantized already"): quantize_model(model, "int8")
    with pytest.raises(ValueError, match="does not fit"):
        swap_linears(_tiny_model(), {"layers.0.attention.wq": QuantLinear.from_float(torch.randn(64, 128))})
    with pytest.raises(ValueError, match="not a linear layer"):
        swap_linears(_tiny_model(), {"layers.0.attention": QuantLinear.from_float(torch.randn(128, 128))})
    with pytest.raises(ValueError, match="unknown format"): bits_per_weight("int3", 64)


def test_small_helpers():
    assert isinstance(cpu_has_bf16(), bool)
    args = ModelArgs(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, multiple_of=256)
    shapes = matmul_shapes(args)
    assert len(shapes) == 211 and shapes[:7] == [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576),
                                                 (576, 1536), (1536, 576)] and shapes[-1] == (49152, 576)
    assert bits_per_weight("int4", 576) == 5.0 and bits_per_weight("Q4_1", 576) == 5.0


# ---- wired into Llama.build and the CLI -----------------------------------------------------------------------------
def test_build_with_quant_on_the_shipped_model():
    from llama_lit.generation import Llama
    ref = Llama.build(max_seq_len=64, max_batch_size=1)
    ids = ref.tokenizer.encode("ROMEO:\nWhat light through yonder window breaks?", bos=True, eos=False)
    with torch.inference_mode(): want = ref.model(torch.tensor([ids]), 0, use_cache=False)
    loss = lambda lg: torch.nn.functional.cross_entropy(lg[0, :-1], torch.tensor(ids[1:])).item()
    for quant, tol in (("int8", 0.02), ("int4", 0.10)):
        llm = Llama.build(max_seq_len=64, max_batch_size=1, quant=quant, kernels=False)
        assert all(isinstance(l, QuantLinear) for l in (llm.model.output, llm.model.layers[0].attention.wq))
        with torch.inference_mode(): got = llm.model(torch.tensor([ids]), 0, use_cache=False)
        assert abs(loss(got) - loss(want)) / loss(want) < tol, quant
        assert len(llm.text_completion(["ROMEO:"], temperature=0.0, max_gen_len=6)[0]["generation"]) > 0


def test_build_keeps_the_gguf_bits():
    from llama_lit.generation import Llama
    llm = Llama.build(smollm2_path(), max_seq_len=64, max_batch_size=1, quant="gguf", kernels=False)   # torch's kernels
    assert llm.model.layers[0].feed_forward.w1.kind == "int4"                  # Q4_1 blocks, not floats
    assert not hasattr(llm.model.layers[0].feed_forward.w1, "weight")
    ids = llm.tokenizer.encode("The capital of France is", bos=False, eos=False)
    out = llm.text_completion(["The capital of France is"], temperature=0.0, max_gen_len=3)[0]["generation"]
    assert "Paris" in out, out


def test_bad_quant_requests(tmp_path):
    from llama_lit.generation import Llama
    with pytest.raises(ValueError, match="quant must be 'auto', None"): Llama.build(quant="int3")
    with pytest.raises(ValueError, match="keeps a GGUF file's own"): Llama.build(quant="gguf")


def test_cli_quant():
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "llama_lit", "generate", "ROMEO:", "--quant", "int4", "--max-gen-len", "6",
                        "--temperature", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr


# ---------------------------------------------------------------- every CPU capability (issue 17)

_ROUND_TRIP = r"""
import json, torch
from llama_lit.quant import QuantLinear, int4pack_pairs, pack_int4, unpack_int4
ok = []
for rows, cols in ((32, 64), (96, 128), (64, 2), (4096 + 96, 64)):       # whole blocks, a partial one, two calls
    codes = torch.randint(0, 16, (rows, cols), dtype=torch.uint8)
    ok.append(torch.equal(unpack_int4(pack_int4(codes)), codes))
for quant, in_f in (("int4", 128), ("q8_0", 256)):
    ql = QuantLinear.from_float(torch.randn(112, 128), quant, dtype=torch.float32)
    w = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.eye(in_f), ql.packed, 32, ql.scales_and_zeros).T[:112]
    ok.append(torch.equal(ql.dequantize(), w if quant == "int4" else w[:, :128] + w[:, 128:]))
print(json.dumps({"cap": torch.backends.cpu.get_cpu_capability(), "ok": ok, "pairs": int4pack_pairs(96)}))
"""


def _capabilities():
    from llama_lit.quant import cpu_capabilities
    return cpu_capabilities()


@pytest.mark.parametrize("cap", _capabilities())
def test_int4_layout_read_back_under_every_capability(cap):
    "unpack_int4 / dequantize are right whichever packer torch runs (default, AVX2, AVX-512), each in a fresh process."
    import json, os, subprocess, sys
    env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "1"}
    out = json.loads(subprocess.run([sys.executable, "-c", _ROUND_TRIP], env=env, capture_output=True, text=True,
                                    check=True, timeout=300).stdout)
    assert out["cap"].lower() == cap and out["ok"] == [True] * 6
    pairs = [tuple(p) for p in out["pairs"]]
    assert sorted(r for p in pairs for r in p) == list(range(96))
    if cap == "default": assert pairs[:2] == [(0, 1), (2, 3)]
    if cap == "avx2": assert pairs[:2] == [(0, 16), (1, 17)]
    if cap == "avx512": assert pairs[:2] == [(0, 32), (1, 33)] and pairs[16] == (16, 48) and pairs[32] == (64, 65)


def test_old_fixed_layout_is_not_what_every_packer_writes():
    "The AVX2-only reading (per 32 rows, rows j | 16+j) is wrong on at least one capability this machine has, or the machine has only AVX2."
    from llama_lit.quant import cpu_capabilities
    import json, os, subprocess, sys
    caps = cpu_capabilities()
    layouts = {}
    for cap in caps:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
        code = "import json; from llama_lit.quant import int4pack_pairs; print(json.dumps(int4pack_pairs(64)))"
        layouts[cap] = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                                 text=True, check=True).stdout)
    avx2_rule = [[j, 16 + j] for j in range(16)] + [[32 + j, 48 + j] for j in range(16)]
    assert layouts["default"] != avx2_rule                                # every CPU has the default build
    assert len({json.dumps(v) for v in layouts.values()}) == len(caps)   # each capability its own layout


# ---------------------------------------------------------------- the CUDA path (no GPU: FakeTensors)

def int4_cuda_reference(x, u, group_size, scales_and_zeros):
    """What torch's _weight_int4pack_mm computes, from its documented input (gpt-fast, torchao): u (N, K/2) uint8 with
    column 2j in the high nibble and 2j+1 in the low, scales_and_zeros (K/g, N, 2): x·((q − 8)·scale + zero)ᵀ."""
    q = torch.stack([u >> 4, u & 15], -1).reshape(u.shape[0], -1).float()             # (N, K)
    scale, zero = scales_and_zeros.float().transpose(0, 1).unbind(-1)                   # (N, K/g) each
    w = ((q.unflatten(1, (-1, group_size)) - 8) * scale[..., None] + zero[..., None]).flatten(1)
    return x.float() @ w.T


def test_cuda_int4_convention_gives_the_gguf_weights():
    "Our CUDA packer input (int4_cuda_bytes) and table, read by the documented CUDA convention, are the file's weights."
    from llama_lit.quant import int4_cuda_bytes, q4_0_blocks, cuda_inner_k_tiles
    torch.manual_seed(5)
    w = torch.randn(48, 128) * 0.05 + 0.01
    eye = torch.eye(128)
    raw = quantize(w.numpy(), QT.Q4_1)
    q, d, m = q4_1_blocks(raw, (48, 128))
    got = int4_cuda_reference(eye, int4_cuda_bytes(q), 32, int4_scales_and_zeros(d, m)).T
    assert torch.equal(got, torch.from_numpy(dequantize(raw, QT.Q4_1)))
    raw = quantize(w.numpy(), QT.Q4_0)
    q, d = q4_0_blocks(raw, (48, 128))
    assert torch.equal(int4_cuda_reference(eye, int4_cuda_bytes(q), 32, int4_scales_and_zeros(d)).T,
                       torch.from_numpy(dequantize(raw, QT.Q4_0)))
    qi = torch.arange(16, dtype=torch.uint8).repeat(2, 2)                  # (2, 32): 0..15, 0..15
    assert int4_cuda_bytes(qi)[0, :2].tolist() == [0x01, 0x23]             # even column high, odd low
    raw = quantize(w.numpy(), QT.Q8_0)                                     # Q8_0 as two int4 halves
    q8, d8 = q8_0_blocks_to_int8(raw, (48, 128))
    u = q8.to(torch.int16) + 128
    codes = torch.cat([u >> 4, u & 15], dim=1)
    _, table = q8_0_to_int4pack(q8, d8)                                    # (2·in/32, out₃₂, 2), float32
    ww = int4_cuda_reference(torch.eye(256), int4_cuda_bytes(codes), 32, table[:, :48]).T
    assert torch.equal(ww[:, :128] + ww[:, 128:], torch.from_numpy(dequantize(raw, QT.Q8_0)))  # float32 table: exact
    ww = int4_cuda_reference(torch.eye(256), int4_cuda_bytes(codes), 32, table[:, :48].bfloat16()).T
    ref = torch.from_numpy(dequantize(raw, QT.Q8_0))                       # CUDA: scales in bfloat16
    assert ((ww[:, :128] + ww[:, 128:] - ref).abs() <= 2 ** -8 * ref.abs() + 1e-12).all()
    assert [cuda_inner_k_tiles(k) for k in (128, 576, 96 * 32, 32)] == [8, 4, 8, 2]
    with pytest.raises(ValueError, match="multiple of 32"): cuda_inner_k_tiles(48)


_FAKE_CUDA = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import fake_cuda
fake_cuda.build_guard(); fake_cuda.fake_torch_cuda(); fake_cuda.fake_swap_tensors()
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from llama_lit.build import load_gguf_quantized, quantized_transformer
from llama_lit.quant import QuantLinear, quantize_model, unpack_int4
from llama_lit.config import ModelArgs
from llama_lit.parallel import init_model_parallel
from llama_lit.model import Transformer
out = {}
def where(t): return [list(t.shape), str(t.dtype).removeprefix("torch."), str(t.device)]
init_model_parallel()
with FakeTensorMode(allow_non_fake_inputs=True), fake_cuda.Scalars():
    for quant in ("int8", "int4", "q8_0", "bf16"):
        fake_cuda.LOG["ops"].clear()
        w = torch.empty(112, 576, device="cuda")
        ql = QuantLinear.from_float(w, quant)
        y = ql(torch.empty(3, 5, 576, device="cuda", dtype=torch.float32))
        out[quant] = {"buffers": {k: where(b) for k, b in ql.named_buffers()}, "y": where(y),
                      "deq": where(ql.dequantize()), "ops": sorted(k for k in fake_cuda.LOG["ops"] if "pack" in k)}
        try: ql(torch.empty(3, 576))
        except ValueError as e: out[quant]["cpu_input"] = str(e)
    cpu = QuantLinear.from_float(torch.randn(64, 128), "int4").to("cuda")   # CPU-packed codes moved to CUDA
    try: cpu(torch.empty(1, 128, device="cuda"))
    except ValueError as e: out["moved"] = str(e)
    try: QuantLinear.from_float(torch.empty(64, 128, device="cuda"), "int4", dtype=torch.float16)
    except ValueError as e: out["fp16"] = str(e)
    if sys.argv[2] != "-":                                                 # the real GGUF file, built for CUDA
        fake_cuda.LOG["ops"].clear()
        params, sd, qlayers = load_gguf_quantized(sys.argv[2], device="cuda")
        args = ModelArgs.from_params(params, max_seq_len=32, max_batch_size=1)
        model = quantized_transformer(args, sd, qlayers, dtype=torch.bfloat16, device="cuda")
        logits = model(torch.zeros(1, 4, dtype=torch.long, device="cuda"), 0, use_cache=False)
        out["gguf"] = {"logits": where(logits), "kinds": sorted({q.kind for q in qlayers.values()}),
                       "devices": sorted({str(b.device) for q in qlayers.values() for b in q.buffers()}
                                         | {str(p.device) for p in model.parameters()}),
                       "ops": sorted(k for k in fake_cuda.LOG["ops"] if "pack" in k)}
        try: quantized_transformer(args, sd, qlayers, device="cpu")
        except ValueError as e: out["gguf"]["wrong_device"] = str(e)
    torch.manual_seed(0)
    tiny = Transformer(ModelArgs(dim=128, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                                 max_batch_size=1, max_seq_len=16)).to("cuda")
    quantize_model(tiny, "int4")
    out["model"] = sorted({str(b.device) for b in tiny.buffers() if b.dtype in (torch.int32, torch.bfloat16)})
    out["model_packed"] = where(tiny.layers[0].attention.wq.packed)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def fake_cuda_run(tmp_path_factory):
    import json, os, subprocess, sys
    from pathlib import Path
    try: gguf_path = str(smollm2_path())
    except FileNotFoundError: gguf_path = "-"
    here = str(Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _FAKE_CUDA, here, gguf_path], env=env, capture_output=True, text=True,
                       timeout=600)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line is not None, p.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_quantlinear_packs_for_cuda(fake_cuda_run):
    "A CUDA weight gets torch's CUDA kernels: packed shapes of the CUDA schema, outputs on cuda, no _for_cpu op."
    r = fake_cuda_run
    assert r["int8"]["buffers"] == {"weight_int8": [[112, 576], "int8", "cuda:0"], "scales": [[112], "bfloat16", "cuda:0"]}
    assert r["int4"]["buffers"] == {"packed": [[128 // 8, 576 // (16 * 4), 32, 2], "int32", "cuda:0"],   # innerKTiles 4
                                    "scales_and_zeros": [[576 // 32, 128, 2], "bfloat16", "cuda:0"]}
    assert r["q8_0"]["buffers"] == {"packed": [[16, 1152 // 128, 32, 4], "int32", "cuda:0"],             # 2·576: innerKTiles 8
                                    "scales_and_zeros": [[1152 // 32, 128, 2], "bfloat16", "cuda:0"]}
    assert r["bf16"]["buffers"] == {"weight": [[112, 576], "bfloat16", "cuda:0"]}
    for quant in ("int8", "int4", "q8_0", "bf16"):
        assert r[quant]["y"] == [[3, 5, 112], "float32", "cuda:0"], quant
        assert r[quant]["deq"] == [[112, 576], "float32", "cuda:0"], quant
        assert not any("for_cpu" in op for op in r[quant]["ops"]), r[quant]["ops"]
        assert "on cpu, this layer's weights on cuda:0" in r[quant]["cpu_input"]
    assert r["int8"]["ops"] == ["aten._weight_int8pack_mm.default"]
    for quant in ("int4", "q8_0"):
        assert r[quant]["ops"] == ["aten._convert_weight_to_int4pack.default", "aten._weight_int4pack_mm.default"]
    assert "packed for torch's CPU kernel" in r["moved"] and "bfloat16 only" in r["fp16"]
    assert r["model"] == ["cuda:0"] and r["model_packed"][1:] == ["int32", "cuda:0"]


def test_gguf_model_builds_for_cuda(fake_cuda_run, smol):
    g = fake_cuda_run["gguf"]
    assert g["logits"] == [[1, 4, 49152], "float32", "cuda:0"] and g["kinds"] == ["int4", "q8_0_int4x2"]
    assert g["devices"] == ["cuda:0"]
    assert not any("for_cpu" in op for op in g["ops"]) and "aten._weight_int4pack_mm.default" in g["ops"]
    assert "load_gguf_quantized(..., device='cpu')" in g["wrong_device"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real GPU (scripts/gpu_check.sh)")
@pytest.mark.parametrize("quant", ["int8", "int4", "q8_0"])
def test_cuda_kernels_for_real(quant):
    torch.manual_seed(0)
    w, x = torch.randn(112, 576, device="cuda") * 0.02, torch.randn(5, 576, device="cuda")
    ql = QuantLinear.from_float(w, quant)
    ref = F.linear(x.bfloat16().float(), ql.dequantize())
    assert (ql(x) - ref).abs().max() <= 1e-2 * ref.abs().max()
    cpu = QuantLinear.from_float(w.cpu(), quant)
    assert torch.allclose(ql.dequantize().cpu(), cpu.dequantize(), rtol=0, atol=0)


# ---------------------------------------------------------------- K-quants: Q4_K as int4, the others said out loud

def _random_blocks(qt, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    "Random bytes (rows, cols/B·bytes) of type qt with float16 scales of a real model's size (|d| ~ 1e-3)."
    rng = np.random.default_rng(seed)
    bs = GGML_QUANT_SIZES[qt][0]
    b = np.frombuffer(rng.bytes(rows * cols // bs * BLOCK_DTYPES[qt].itemsize), BLOCK_DTYPES[qt]).copy()
    for k in ("d", "m", "dmin"):
        if k in b.dtype.names: b[k] = (np.abs(rng.standard_normal(len(b))) * 1e-3).astype(np.float16)
    return b.view(np.uint8).reshape(rows, -1)


@pytest.mark.parametrize("rows", [64, 80])
def test_q4_k_as_int4_exact_codes(rows):
    raw = _random_blocks(QT.Q4_K, rows, 512, seed=rows)
    ref = torch.from_numpy(dequantize(raw, QT.Q4_K))                                    # (rows, 512)
    q, scale, mins = q4_k_blocks(raw, (rows, 512))
    assert q.shape == (rows, 512) and scale.shape == mins.shape == (rows, 16) and scale.dtype == torch.float32
    per_w = lambda x: x.repeat_interleave(32, 1)
    assert torch.equal(per_w(scale) * q - per_w(mins), ref)                            # w = scale·q − min, exactly
    packed, table = q4_k_blocks_to_int4pack(raw, (rows, 512))
    assert torch.equal(unpack_int4(packed)[:rows], q)                                  # the file's codes
    assert torch.allclose(kernel_weights(packed, table, rows, 512), ref, rtol=0, atol=1e-6 * ref.abs().max())
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)):              # bf16: scale and zero rounded
        ql = QuantLinear.from_int4(q, scale, -mins, 32, dtype=dtype)
        assert ql.kind == "int4" and torch.equal(unpack_int4(ql.packed)[:rows], q)
        assert (ql.dequantize() - ref).abs().max() <= tol * ref.abs().max()


def test_gguf_qlinear_kquants(tmp_path):
    "Q4_K -> int4, codes kept; Q5_0/Q5_1/Q5_K/Q6_K -> the compute dtype with one warning naming tensor and bytes."
    types = {"k4.weight": QT.Q4_K, "k5.weight": QT.Q5_K, "k6.weight": QT.Q6_K, "q50.weight": QT.Q5_0,
             "q51.weight": QT.Q5_1}
    w = GGUFWriter(tmp_path / "k.gguf", "llama")
    for i, (name, qt) in enumerate(types.items()):
        w.add_tensor(name, _random_blocks(qt, 48, 512, seed=i), raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    t = {x.name: x for x in open_gguf(tmp_path / "k.gguf").tensors}
    ref = {n: dequantize_tensor(x) for n, x in t.items()}
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                                  # Q4_K: no warning
        ql = gguf_qlinear(t["k4.weight"])
    assert (ql.kind, ql.group_size, ql.dtype) == ("int4", 32, torch.bfloat16)
    q, _, _ = q4_k_blocks(t["k4.weight"].data, (48, 512))
    assert torch.equal(unpack_int4(ql.packed)[:48], q)
    assert (ql.dequantize() - ref["k4.weight"]).abs().max() <= 2 ** -7 * ref["k4.weight"].abs().max()
    x = torch.randn(3, 512)
    want = F.linear(x.bfloat16().float(), ql.dequantize())
    assert (ql(x) - want).abs().max() <= 1e-2 * want.abs().max()
    for name in ("k5.weight", "k6.weight", "q50.weight", "q51.weight"):
        disk = 48 * 512 // GGML_QUANT_SIZES[types[name]][0] * GGML_QUANT_SIZES[types[name]][1]
        with pytest.warns(UserWarning, match=rf"{name}: {types[name].name} has no packed form .*bfloat16: 49,152 bytes "
                                             rf"\(0.0 MiB\) for the file's {disk:,}"):
            ql = gguf_qlinear(t[name])
        assert ql.kind == "float" and ql.weight.dtype == torch.bfloat16
        assert torch.equal(ql.weight, ref[name].bfloat16()) and ql.nbytes == 48 * 512 * 2
        with pytest.warns(UserWarning, match="float32"):
            assert gguf_qlinear(t[name], other="f32").weight.dtype == torch.float32
        assert gguf_qlinear(t[name], other="int8").kind == "int8"                     # requantized: no warning needed


def test_bits_per_weight_gguf_types():
    assert [bits_per_weight(q, 4096) for q in ("Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")] == [5.5, 6.0, 4.5, 5.5, 6.5625]


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_K", "Q6_K", "Q5_0"])
def test_gguf_qlinear_refuses_a_nan_scale_naming_the_tensor(tmp_path, qtype):
    "torch's path (kernels=False, a GPU) refuses a corrupt scale like the CPU kernels' path does (issue 21, item 3)."
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFWriter
    from llama_lit.gguf import BLOCK_DTYPES
    from llama_lit.gguf_file import open_gguf
    from llama_lit.quant import gguf_qlinear
    qt = QT[qtype]
    block, size = GGML_QUANT_SIZES[qt]
    rows, cols = 4, 256
    raw = np.random.default_rng(0).integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    rec = raw.view(BLOCK_DTYPES[qt]).reshape(-1)
    rec["d"] = 0.01
    rec["d"][3] = np.nan
    w = GGUFWriter(tmp_path / "m.gguf", "llama")
    w.add_tensor("blk.0.attn_q.weight", raw.reshape(rows, -1), raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    t = open_gguf(tmp_path / "m.gguf").tensors[0]
    with pytest.raises(ValueError, match="blk.0.attn_q.weight.*scale d"):
        gguf_qlinear(t, dtype=torch.float32)
