"""Chapter 11b's K-quant kernels (Q4_K, Q5_K, Q6_K kept as the file's bytes): the field unpacking against gguf's own
dequantization, the Q8_K activation rounding bit for bit against the C++, every operator against its float64
reference under every vector width the CPU runs, the fake (meta) path and torch.compile, bad arguments, and
KQuantLinear on a GGUF file written with gguf's writer."""
from pathlib import Path

import gguf
import pytest
import torch
from gguf.quants import dequantize

from llama_lit import kernels
from llama_lit.gguf import dequantize_tensor
from llama_lit.gguf_file import open_gguf
from llama_lit.kquants import (KQUANT_BYTES, KQUANT_TYPES, QK_K, KQuantLinear, fuse_kquant_rows, kquant_fields,
                               kquant_qlinear, kquants_available, q4_k_linear, q5_k_linear, q6_k_linear,
                               quantize_q8_k, reference_kquant_linear)

LINEARS = {"q4_k": q4_k_linear, "q5_k": q5_k_linear, "q6_k": q6_k_linear}
needs_kernels = pytest.mark.skipif(not kquants_available(), reason="the CPU kernels do not build here")


def rand_blocks(kind, N, K, seed=0):
    "Random valid K-quant bytes (N, K/256·bytes): random codes and scales, finite float16 d (and dmin) near 0.01."
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 256, (N, K // QK_K, KQUANT_BYTES[kind]), dtype=torch.uint8, generator=g)
    half = lambda: (torch.randn(N, K // QK_K, generator=g) * 0.01).half().view(torch.uint8).reshape(N, -1, 2)
    if kind == "q6_k": r[..., 208:210] = half()
    else: r[..., 0:2], r[..., 2:4] = half(), half()
    return r.reshape(N, -1)


def rand_x(M, K, seed=0):
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed))
    x[0, :QK_K] = 0                                             # an all-zero super-block
    if M > 1: x[1, -QK_K:] *= 1000                             # one far larger than the rest
    return x


def cpu_isas():
    "The variants this CPU runs (chapter 11's cpu_isas where it has one)."
    if hasattr(kernels, "cpu_isas"): return list(kernels.cpu_isas())
    flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    return ["avx2"] + (["avx512"] if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"} <= flags else [])


@pytest.fixture(params=cpu_isas())
def isa(request):
    "Each variant in turn, the one before restored afterwards."
    before = kernels.kernel_isa()
    kernels.set_kernel_isa(request.param)
    yield request.param
    kernels.set_kernel_isa(before)


@pytest.mark.parametrize("kind", list(KQUANT_TYPES))
def test_fields_rebuild_gguf_dequantize(kind):
    b = rand_blocks(kind, 6, 512, seed=3)
    f = {k: v.double() for k, v in kquant_fields(kind, b).items()}
    if kind == "q6_k": w = f["d"][..., None, None] * f["scales"][..., None] * (f["q"] - 32)
    else: w = f["d"][..., None, None] * f["scales"][..., None] * f["q"] - (f["dmin"][..., None] * f["mins"])[..., None]
    want = torch.from_numpy(dequantize(b.numpy(), KQUANT_TYPES[kind])).double()
    torch.testing.assert_close(w.reshape(6, 512), want, rtol=0, atol=1e-4)
    assert int(f["q"].max()) == {"q4_k": 15, "q5_k": 31, "q6_k": 63}[kind] and int(f["q"].min()) == 0


def test_quantize_q8_k_rules():
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(0)).clamp(-4, 4)
    x[1, :256] = 0
    x[2, 10], x[2, 20] = -5.0, 5.0                             # a tie: the first one is ggml's `max`
    q, d, bs = quantize_q8_k(x)
    assert (q[2, 10].item(), q[2, 20].item()) == (-127, 127) and d[2, 0] > 0
    assert d[1, 0] == 0 and not q[1, :256].any()
    assert torch.equal(bs, q.reshape(3, -1, 16).int().sum(-1).short())
    err = (x.reshape(3, 2, 256) - d[..., None] * q.float().reshape(3, 2, 256)).abs().amax(-1)
    assert (err <= d.abs() * 0.5001).all()
    with pytest.raises(ValueError, match="multiple of 256"): quantize_q8_k(torch.randn(1, 100))


@needs_kernels
def test_quantize_q8_k_matches_the_cpp_bit_for_bit():
    x = torch.randn(5, 1536, generator=torch.Generator().manual_seed(1)) * torch.logspace(-3, 3, 1536)
    x[0, :256] = 0
    x[2, 300] = 1e4
    x[3] = torch.randn(1536) * 0.1
    x[3, 5], x[3, 9] = -7.0, 7.0
    x[4] = torch.round(torch.randn(1536) * 8) / 16 * 127 / 4    # many products land on halves
    x[1, 700], x[1, 1400] = float("nan"), float("-inf")          # d = NaN for those super-blocks, q = 0
    for got, want in zip(torch.ops.llama_lit.quantize_q8_k(x), quantize_q8_k(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@needs_kernels
@pytest.mark.parametrize("kind", list(KQUANT_TYPES))
def test_a_nan_stays_a_nan_in_its_row(isa, kind):
    x = rand_x(2, 512)
    x[1, 3] = float("nan")
    y = LINEARS[kind](x, rand_blocks(kind, 5, 512))
    assert not y[0].isnan().any() and y[1].isnan().all()


@needs_kernels
@pytest.mark.parametrize("kind", list(KQUANT_TYPES))
@pytest.mark.parametrize("N,K", [(7, 256), (130, 1536), (64, 512)])
@pytest.mark.parametrize("M", [1, 3, 6])
def test_kernel_matches_reference(isa, kind, N, K, M):
    x, b = rand_x(M, K, seed=N), rand_blocks(kind, N, K, seed=N + M)
    ref = reference_kquant_linear(kind, x, b)
    torch.testing.assert_close(LINEARS[kind](x, b), ref, rtol=0, atol=1e-5 * ref.abs().max().item() + 1e-12)


@needs_kernels
def test_bad_arguments_raise_value_errors():
    x, b = torch.randn(2, 512), rand_blocks("q4_k", 5, 512)
    for call, msg in ((lambda: q4_k_linear(torch.randn(2, 500), b), "positive multiple of 256"),
                      (lambda: q4_k_linear(x, b[:, :200]), r"blocks must be uint8 \(N, 288\)"),
                      (lambda: q6_k_linear(x, b), "records of 210 bytes"),
                      (lambda: q5_k_linear(x, b.view(torch.int8)), "got torch.int8"),
                      (lambda: q4_k_linear(x.to("meta"), b), "x is on meta"),
                      (lambda: q4_k_linear(x, b.to("meta")), "blocks is on meta"),
                      (lambda: q4_k_linear(x.numpy(), b), "x must be a tensor")):
        with pytest.raises(ValueError, match=msg): call()


@needs_kernels
def test_fake_and_compile():
    x, b = torch.randn(2, 512), rand_blocks("q5_k", 5, 512)
    y = torch.ops.llama_lit.q5_k_linear(x.to("meta"), b.to("meta"))
    assert tuple(y.shape) == (2, 5) and y.device.type == "meta"
    lin = KQuantLinear("q5_k", 5, 512, b)
    f = torch.compile(lambda x: lin(x) * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x), lin(x) * 2)


def write_gguf(path, mats, raws):
    w = gguf.GGUFWriter(str(path), "llama")
    for n, (kind, N, K) in mats.items(): w.add_tensor(n, raws[n].numpy(), raw_dtype=KQUANT_TYPES[kind])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def test_kquantlinear_from_a_gguf_file(tmp_path):
    mats = {"blk.0.attn_q.weight": ("q4_k", 96, 512), "blk.0.ffn_up.weight": ("q5_k", 40, 256),
            "blk.0.ffn_down.weight": ("q6_k", 33, 768), "blk.0.attn_k.weight": ("q4_k", 5, 1536)}
    raws = {n: rand_blocks(kind, N, K, seed=i) for i, (n, (kind, N, K)) in enumerate(mats.items())}
    write_gguf(tmp_path / "k.gguf", mats, raws)
    for t in open_gguf(tmp_path / "k.gguf").tensors:
        kind, N, K = mats[t.name]
        lin = KQuantLinear.from_gguf(t)
        assert (lin.kind, lin.out_features, lin.in_features, lin.nbytes) == (kind, N, K, int(t.n_bytes))
        assert torch.equal(lin.blocks, raws[t.name])
        assert torch.equal(lin.dequantize(), dequantize_tensor(t).float())
        if kquants_available():
            x = torch.randn(2, 3, K)
            ref = reference_kquant_linear(kind, x.reshape(-1, K), lin.blocks).reshape(2, 3, N)
            torch.testing.assert_close(lin(x), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
            assert lin(x.bfloat16()).dtype == torch.bfloat16


def test_kquantlinear_refuses_what_it_cannot_hold(tmp_path):
    z = torch.zeros(4, 144, dtype=torch.uint8)
    with pytest.raises(ValueError, match="multiple of 256"): KQuantLinear("q4_k", 4, 300, z)
    with pytest.raises(ValueError, match=r"uint8 \(4, 288\)"): KQuantLinear("q4_k", 4, 512, z)
    with pytest.raises(ValueError, match="unknown KQuantLinear kind"): KQuantLinear("q3_k", 4, 512, torch.zeros(4, 1))
    w = gguf.GGUFWriter(str(tmp_path / "f.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", torch.randn(4, 256).numpy())
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ValueError, match="not F32"): KQuantLinear.from_gguf(open_gguf(tmp_path / "f.gguf").tensors[0])
    lin = KQuantLinear("q4_k", 4, 512, rand_blocks("q4_k", 4, 512))
    with pytest.raises(ValueError, match="takes 512"): lin(torch.randn(2, 256))


@needs_kernels
@pytest.mark.parametrize("kind", ["q4_k", "q5_k", "q6_k"])
@pytest.mark.parametrize("K", [256, 768, 1536])
def test_a_prompts_rows_have_the_bits_of_each_row_alone(isa, kind, K):
    "Four activation rows per tile for a prompt, and each row's result is the one it has alone (a decode step's)."
    m = KQuantLinear(kind, 39, K, rand_blocks(kind, 39, K, seed=1))            # 39: a last tile of three rows
    x = torch.randn(13, K)
    alone = torch.cat([m(x[i : i + 1]) for i in range(13)])
    assert torch.equal(m(x), alone)


def test_fuse_kquant_rows_shares_memory():
    a, b = (KQuantLinear("q6_k", n, 512, rand_blocks("q6_k", n, 512, seed=n)) for n in (48, 13))
    x = torch.randn(2, 512)
    want = torch.cat([a(x), b(x)], -1)
    ab = fuse_kquant_rows([a, b])
    assert torch.equal(ab(x), want) and a.blocks.data_ptr() == ab.blocks.data_ptr()
    assert torch.equal(torch.cat([a(x), b(x)], -1), want)
    with pytest.raises(ValueError, match="one kind"):
        fuse_kquant_rows([ab, KQuantLinear("q4_k", 2, 512, rand_blocks("q4_k", 2, 512))])


def test_kquant_qlinear_keeps_every_type_packed(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", rand_blocks("q4_k", 8, 512).numpy(), raw_dtype=KQUANT_TYPES["q4_k"])
    Q8_0 = gguf.GGMLQuantizationType.Q8_0
    w.add_tensor("blk.0.attn_k.weight", gguf.quants.quantize(torch.randn(8, 256).numpy(), Q8_0), raw_dtype=Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    mods = [kquant_qlinear(t) for t in open_gguf(tmp_path / "m.gguf").tensors]
    assert [(type(m).__name__, m.kind) for m in mods] == [("KQuantLinear", "q4_k"), ("KernelLinear", "q8_0")]


@needs_kernels
@pytest.mark.parametrize("kind", list(KQUANT_TYPES))
@pytest.mark.parametrize("scale_byte", [0x7F, 0x80, 0xFF])
def test_extreme_codes_and_activations_do_not_overflow(isa, kind, scale_byte):
    "Every code and 6-bit scale/min at its largest (Q6_K's int8 scales at 127, -128, -1) against activations of ±127."
    b = torch.full((4, 2, KQUANT_BYTES[kind]), 0xFF, dtype=torch.uint8)
    one = torch.tensor([1.0], dtype=torch.float16).view(torch.uint8)
    if kind == "q6_k": b[..., 192:208], b[..., 208:210] = scale_byte, one
    else: b[..., 0:2], b[..., 2:4] = one, one
    b = b.reshape(4, -1)
    x = torch.ones(5, 512)                                       # four rows at once, then one
    x[1] = -1
    x[2, ::2] = -1                                               # alternating signs
    x[3, 1::2] = -1
    ref = reference_kquant_linear(kind, x, b)
    torch.testing.assert_close(LINEARS[kind](x, b), ref, rtol=1e-6, atol=1e-3)
