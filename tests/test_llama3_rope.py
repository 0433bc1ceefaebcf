"""Llama 3.1's scaled RoPE in a whole model, against a reference nobody here wrote: a random Llama 3.1-style
`LlamaForCausalLM` (rope_type "llama3", grouped-query attention, base 500000) and the same weights in llama_lit's
`Transformer` with `use_scaled_rope=True` give the same logits over positions far past the original context, through
the KV cache too; the same weights without scaling give clearly different logits.

The original context is 64 tokens here (Llama 3.x: 8192) so that a 200-token sequence reaches well past it, and with
head_dim 64 most of the 32 RoPE pairs are scaled (see `test_most_pairs_are_scaled`). The HF config and the weight
mapping are written out in this file, independently of llama_lit's converters."""
import math
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llama_lit.config import ModelArgs, ffn_hidden_dim
from llama_lit.model import Transformer
from llama_lit.rope import llama3_scale_freqs, permute_hf_to_meta, rope_freqs

DIM, N_LAYERS, N_HEADS, N_KV_HEADS, VOCAB, MULTIPLE_OF = 256, 2, 4, 2, 512, 32
HEAD_DIM = DIM // N_HEADS                                  # 64: 32 RoPE pairs
THETA, FACTOR, LOW, HIGH, ORIGINAL = 500000.0, 8.0, 1.0, 4.0, 64
SEQ, MAX_SEQ = 200, 256                                    # positions 0..199, far past ORIGINAL = 64
TOL = 1e-4


def hf_config(scaled: bool) -> "transformers.LlamaConfig":
    rope = (dict(rope_type="llama3", rope_theta=THETA, factor=FACTOR, low_freq_factor=LOW, high_freq_factor=HIGH,
                 original_max_position_embeddings=ORIGINAL) if scaled else dict(rope_type="default", rope_theta=THETA))
    return transformers.LlamaConfig(hidden_size=DIM, intermediate_size=ffn_hidden_dim(DIM, MULTIPLE_OF),
                                    num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                                    num_key_value_heads=N_KV_HEADS, vocab_size=VOCAB, max_position_embeddings=MAX_SEQ,
                                    rms_norm_eps=1e-5, rope_parameters=rope, initializer_range=0.1,
                                    tie_word_embeddings=False)


def model_args(scaled: bool) -> ModelArgs:
    return ModelArgs(dim=DIM, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, vocab_size=VOCAB,
                     multiple_of=MULTIPLE_OF, norm_eps=1e-5, rope_theta=THETA, use_scaled_rope=scaled,
                     rope_scaling_factor=FACTOR, rope_low_freq_factor=LOW, rope_high_freq_factor=HIGH,
                     rope_original_max_seq_len=ORIGINAL, max_batch_size=2, max_seq_len=MAX_SEQ)


_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
          "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
          "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
          "post_attention_layernorm": "ffn_norm"}


def hf_to_meta(sd: dict) -> dict:
    "HF LlamaForCausalLM weights -> Meta names, q/k rows back from rotate-half to interleaved RoPE pairs."
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"): continue
        if k == "model.embed_tokens.weight": out["tok_embeddings.weight"] = v
        elif k == "model.norm.weight": out["norm.weight"] = v
        elif k == "lm_head.weight": out["output.weight"] = v
        else:
            i, name = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", k).groups()
            if name == "self_attn.q_proj": v = permute_hf_to_meta(v, N_HEADS)
            if name == "self_attn.k_proj": v = permute_hf_to_meta(v, N_KV_HEADS)
            out[f"layers.{i}.{_LAYER[name]}.weight"] = v
    return out


@pytest.fixture(scope="module")
def hf_models():
    "The scaled reference and, with the very same weights, an unscaled one."
    torch.manual_seed(0)
    scaled = transformers.LlamaForCausalLM(hf_config(True)).float().eval()
    plain = transformers.LlamaForCausalLM(hf_config(False)).float().eval()
    missing, unexpected = plain.load_state_dict(scaled.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("inv_freq") for k in missing), (missing, unexpected)
    return scaled, plain


@pytest.fixture(scope="module")
def ours(hf_models):
    "llama_lit Transformers with the reference's weights: (scaled, unscaled)."
    sd = hf_to_meta(hf_models[0].state_dict())
    models = []
    for scaled in (True, False):
        m = Transformer(model_args(scaled))
        m.load_state_dict(sd, strict=True)
        models.append(m.eval())
    return tuple(models)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))   # (2, 200)


@pytest.fixture(scope="module")
def logits(hf_models, ours, tokens):
    "All four models' logits (2, 200, vocab) on the same tokens."
    with torch.inference_mode():
        return dict(hf_scaled=hf_models[0](tokens).logits.float(), hf_plain=hf_models[1](tokens).logits.float(),
                    ours_scaled=ours[0](tokens, 0), ours_plain=ours[1](tokens, 0))


def test_most_pairs_are_scaled():
    "The setting exercises all three branches: kept, interpolated and divided-by-factor pairs."
    lam = 2 * math.pi / rope_freqs(HEAD_DIM, THETA)                  # (32,) wavelengths, tokens
    kept, slowed = int((lam < ORIGINAL / HIGH).sum()), int((lam > ORIGINAL / LOW).sum())
    assert kept >= 1 and slowed >= 20 and kept + slowed < HEAD_DIM // 2, (kept, slowed)
    assert SEQ > 3 * ORIGINAL


def test_model_uses_the_scaled_frequencies(hf_models, ours):
    "Our model's RoPE table turns position 1 by exactly the frequencies transformers computes for rope_type llama3."
    inv_freq = hf_models[0].model.rotary_emb.inv_freq.float()        # (32,)
    ref = llama3_scale_freqs(rope_freqs(HEAD_DIM, THETA), FACTOR, LOW, HIGH, ORIGINAL)
    torch.testing.assert_close(ref, inv_freq, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours[0].freqs_cis[1].angle(), inv_freq, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(ours[1].freqs_cis[1].angle(), inv_freq, rtol=1e-3, atol=0)


def test_scaled_logits_match_transformers(logits):
    diff = (logits["ours_scaled"] - logits["hf_scaled"]).abs().max().item()
    assert diff <= TOL, diff
    assert torch.equal(logits["ours_scaled"].argmax(-1), logits["hf_scaled"].argmax(-1))


def test_unscaled_model_differs_clearly(logits):
    "Same weights without scaling: equal to transformers' default RoPE, and clearly not the llama3 model."
    assert (logits["ours_plain"] - logits["hf_plain"]).abs().max().item() <= TOL
    per_pos = (logits["ours_plain"] - logits["hf_scaled"]).abs().amax(dim=(0, 2))   # (200,) worst over batch, vocab
    assert per_pos[1:].max().item() > 1000 * TOL, per_pos.max().item()             # > 0.1: not a rounding effect
    assert per_pos[ORIGINAL:].mean() > per_pos[1:8].mean()                          # and it grows with position
    test_scaled_logits_match_transformers(logits)                                   # while the scaled one agrees


def test_kv_cache_decode_matches_transformers(hf_models, ours, tokens):
    "Prefill 150 tokens, then 50 single-token steps through the KV cache: same logits as the reference's full pass."
    model, (ref_model, _) = ours[0], hf_models
    prefill = 150
    with torch.inference_mode():
        ref = ref_model(tokens).logits.float()[:, prefill - 1:]                     # (2, 51, vocab)
        got = [model(tokens[:, :prefill], 0)[:, -1]]
        for pos in range(prefill, SEQ):
            got.append(model(tokens[:, pos:pos + 1], pos)[:, -1])
    got = torch.stack(got, 1)                                                        # (2, 51, vocab)
    diff = (got - ref).abs().max().item()
    assert diff <= TOL, diff
