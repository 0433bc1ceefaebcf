"""Hugging Face interop end to end: a random LlamaForCausalLM saved with save_pretrained -> `llama_lit convert
--from hf` -> Llama.build generates the same greedy tokens with the same logits as transformers; `convert --to hf`
back -> transformers loads it and agrees again."""
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

import llama_lit.build  # noqa: F401  (Llama.build)
from llama_lit.assets import default_tokenizer_path
from llama_lit.cli import main
from llama_lit.generation import Llama
from llama_lit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=Tokenizer().n_words, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
                                   initializer_range=0.1, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    d = tmp_path_factory.mktemp("hf") / "model"
    model.save_pretrained(d)
    shutil.copyfile(default_tokenizer_path(), d / "tokenizer.model")
    return d


def hf_greedy(model, ids, n):
    t = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    return out[0, len(ids):].tolist()


def test_convert_from_hf_then_build(hf_dir, tmp_path):
    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "meta")]) == 0
    assert (tmp_path / "meta" / "tokenizer.model").is_file()
    llm = Llama.build(tmp_path / "meta", max_seq_len=64, max_batch_size=1)
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).float().eval()
    ids = llm.tokenizer.encode("Good night, good night! Parting is such sweet sorrow", bos=True, eos=False)
    with torch.inference_mode():
        diff = (llm.model(torch.tensor([ids]), 0) - hf(torch.tensor([ids])).logits).abs().max().item()
    assert diff <= 1e-4, diff
    ours, _ = llm.generate([ids], max_gen_len=10, temperature=0.0)
    want = hf_greedy(hf, ids, 10)
    assert ours[0] == want[: len(ours[0])] and len(ours[0]) > 0   # ours stops early only at EOS


def test_convert_sharded_safetensors(hf_dir, tmp_path):
    """A checkpoint split into several safetensors files with an index converts to the same weights."""
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert main(["convert", "--from", "hf", str(tmp_path / "sharded"), str(tmp_path / "a")]) == 0
    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "b")]) == 0
    from llama_lit.checkpoint import load_shard
    a, b = load_shard(tmp_path / "a"), load_shard(tmp_path / "b")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_back_to_hf(hf_dir, tmp_path):
    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "meta")]) == 0
    assert main(["convert", "--to", "hf", str(tmp_path / "meta"), str(tmp_path / "hf2")]) == 0
    a = transformers.LlamaForCausalLM.from_pretrained(hf_dir).float().eval()
    b = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf2").float().eval()
    ids = torch.randint(3, 4000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (a(ids).logits - b(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("params, want", [
    ({"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}, 4096),  # Llama-2-7b
    ({"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05, "vocab_size": -1}, 4096),  # Llama-2-13b
    ({"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8, "n_layers": 80,
      "norm_eps": 1e-05, "vocab_size": -1}, 4096),                                                                   # Llama-2-70b
    ({"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-06, "vocab_size": -1}, 2048),  # LLaMA-7B
    ({"dim": 8192, "multiple_of": 256, "n_heads": 64, "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}, 2048),  # LLaMA-65B
])
def test_meta_params_get_their_published_context(params, want):
    "Meta's own params.json files (no context_length): Llama 2 converts with 4096 tokens, not Llama 1's 2048."
    from llama_lit.checkpoint import params_to_hf_config
    assert params_to_hf_config({**params, "vocab_size": 32000})["max_position_embeddings"] == want
