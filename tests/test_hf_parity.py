"""Fidelity against a reference nobody here wrote: a random GQA LlamaForCausalLM from transformers, its weights
mapped into our Transformer with the exported converter, gives the same logits and the same greedy tokens."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from llama_lit.config import ModelArgs
from llama_lit.model import Transformer, expected_keys
from llama_lit.checkpoint import (convert_hf_state_dict, convert_meta_state_dict_to_hf,
                             hf_config_to_params)

ROPE_THETA = 50000.0   # not the default, so a converter that ignores it fails


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=2, vocab_size=1024, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                                   initializer_range=0.1, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    return model


@pytest.fixture(scope="module")
def ours(hf_model):
    params = hf_config_to_params(hf_model.config.to_dict())
    assert params["rope_theta"] == ROPE_THETA and params["n_kv_heads"] == 2
    model = Transformer(ModelArgs(**params, max_batch_size=4, max_seq_len=64))
    sd = convert_hf_state_dict(hf_model.state_dict(), params)
    assert sorted(sd) == sorted(expected_keys(4))
    model.load_state_dict(sd, strict=True)
    return model.eval(), params


def prompts():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 1024, (4, 20), generator=g)   # a batch of 4 prompts of 20 tokens


def test_logits_match_transformers(hf_model, ours):
    model, _ = ours
    tokens = prompts()
    with torch.inference_mode():
        ref = hf_model(tokens).logits.float()
        got = model(tokens, 0)
    diff = (got - ref).abs().max().item()
    assert diff <= 1e-4, diff
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_greedy_tokens_match_transformers(hf_model, ours):
    """Greedy continuation through our KV cache == transformers' generate (do_sample=False)."""
    model, _ = ours
    tokens, n_new = prompts(), 12
    with torch.inference_mode():
        ref = hf_model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=n_new,
                                do_sample=False, pad_token_id=0)[:, tokens.shape[1]:]
        logits = model(tokens, 0)[:, -1]
        out = []
        for t in range(n_new):
            nxt = logits.argmax(-1)
            out.append(nxt)
            logits = model(nxt[:, None], tokens.shape[1] + t)[:, -1]
    assert torch.equal(torch.stack(out, 1), ref)


def test_round_trip_to_hf(hf_model, ours):
    """Our weights written back in HF layout load into LlamaForCausalLM and reproduce the original exactly."""
    model, params = ours
    back = convert_meta_state_dict_to_hf(model.state_dict(), params)
    ref = hf_model.state_dict()
    assert sorted(back) == sorted(k for k in ref if not k.endswith("rotary_emb.inv_freq"))
    for k, v in back.items():
        assert torch.equal(v, ref[k]), k
