"""Sampling against a reference nobody here wrote: top-k and the repetition penalty equal transformers' logits
processors on random logits, top-p follows Meta's rule (and differs from transformers' only where a prefix sums to
exactly p), the combined step samples from the distribution transformers would, greedy generation with a penalty
equals transformers' `generate`, and bad values are refused everywhere, the CLI included."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

import llama_lit.build  # noqa: F401  (Llama.build)
from llama_lit import sampling
from llama_lit.checkpoint import convert_hf_state_dict, hf_config_to_params
from llama_lit.cli import main
from llama_lit.config import ModelArgs
from llama_lit.generation import Llama
from llama_lit.model import Transformer
from llama_lit.parallel import init_model_parallel
from llama_lit.sampling import apply_repetition_penalty, apply_top_k, next_token, sample_top_p
from llama_lit.tokenizer import Tokenizer


def random_logits(bsz=4, vocab=1000, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(bsz, vocab, generator=g) * 3
    return z.round() if ties else z                  # rounded: many logits tied with the k-th


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, 50, 999, 1000, 5000])
def test_top_k_equals_transformers(k, ties):
    z = random_logits(ties=ties)
    assert torch.equal(apply_top_k(z, k), TopKLogitsWarper(top_k=k)(None, z.clone()))


def test_top_k_zero_is_off():
    z = random_logits()
    assert apply_top_k(z, 0) is z


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
@pytest.mark.parametrize("n_prev", [1, 7, 200])
def test_repetition_penalty_equals_transformers(penalty, n_prev):
    z = random_logits()
    g = torch.Generator().manual_seed(n_prev)
    prev = torch.randint(0, 50, (4, n_prev), generator=g)   # a small range: many repeats in each row
    want = RepetitionPenaltyLogitsProcessor(penalty=penalty)(prev, z.clone())
    assert torch.equal(apply_repetition_penalty(z, prev, penalty), want)


def test_repetition_penalty_once_per_token_and_pads_ignored():
    z = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    once = apply_repetition_penalty(z, torch.tensor([[0, 1]]), 2.0)
    assert torch.equal(apply_repetition_penalty(z, torch.tensor([[0, 0, 0, 1, 1]]), 2.0), once)
    assert torch.equal(apply_repetition_penalty(z, torch.tensor([[0, -1, 1, -1]]), 2.0), once)
    assert torch.equal(once, torch.tensor([[1.0, -2.0, 3.0, 0.5]]))


def kept_by_sample_top_p(probs: torch.Tensor, p: float, monkeypatch) -> list[set]:
    "The token ids sample_top_p can return, read off the distribution it hands to torch.multinomial."
    seen = {}
    def fake_multinomial(x, num_samples):
        seen["probs"] = x.clone()
        return torch.zeros(x.shape[0], 1, dtype=torch.long)
    with monkeypatch.context() as m:
        m.setattr(sampling.torch, "multinomial", fake_multinomial)
        sorted_probs, idx = torch.sort(probs, dim=-1, descending=True)
        sample_top_p(probs.clone(), p)
    return [set(idx[r][seen["probs"][r] > 0].tolist()) for r in range(probs.shape[0])]


def kept_by_transformers(probs: torch.Tensor, p: float) -> list[set]:
    out = TopPLogitsWarper(top_p=p)(None, probs.log())
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in out]


def test_top_p_edge_meta_keeps_one_more(monkeypatch):
    """At a prefix sum of exactly p, Meta's rule (mass before the token <= p) keeps the next token too; the paper's
    rule (smallest prefix with mass >= p), which transformers follows, stops."""
    probs = torch.tensor([[0.5, 0.375, 0.125]])        # prefix sums 0.5, 0.875, 1.0: exact in binary
    assert kept_by_sample_top_p(probs, 0.875, monkeypatch) == [{0, 1, 2}]
    assert kept_by_transformers(probs, 0.875) == [{0, 1}]
    assert kept_by_sample_top_p(probs, 0.5, monkeypatch) == [{0, 1}]
    assert kept_by_transformers(probs, 0.5) == [{0}]
    for p in (0.8749, 0.4999, 0.9, 0.3):                 # off the edge the two rules agree
        assert kept_by_sample_top_p(probs, p, monkeypatch) == kept_by_transformers(probs, p)
    probs = torch.tensor([[0.5, 0.25, 0.25]])           # the brief's example: 0.5 + 0.25 = 0.75 exactly
    assert kept_by_sample_top_p(probs, 0.75, monkeypatch) == [{0, 1, 2}]
    assert len(kept_by_transformers(probs, 0.75)[0]) == 2


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95, 1.0])
def test_top_p_agrees_with_transformers_off_the_edge(p, monkeypatch):
    probs = torch.softmax(random_logits(vocab=300), -1)
    assert kept_by_sample_top_p(probs, p, monkeypatch) == kept_by_transformers(probs, p)


@pytest.mark.parametrize("temperature,top_k,top_p,penalty", [(0.7, 0, 0.9, 1.0), (1.0, 20, 1.0, 1.0),
                                                             (0.8, 40, 0.9, 1.3), (1.5, 5, 0.5, 0.8)])
def test_next_token_samples_what_transformers_would(temperature, top_k, top_p, penalty, monkeypatch):
    """The distribution next_token hands to torch.multinomial equals softmax of transformers' processors in
    generate's order (penalty, temperature, top-k, top-p)."""
    z = random_logits(vocab=500)
    prev = torch.randint(0, 500, (4, 30), generator=torch.Generator().manual_seed(1))
    seen = {}
    def fake_multinomial(x, num_samples):
        seen["probs"] = x.clone()
        return torch.zeros(x.shape[0], 1, dtype=torch.long)
    monkeypatch.setattr(sampling.torch, "multinomial", fake_multinomial)
    next_token(z, temperature, top_p, top_k=top_k, repetition_penalty=penalty, prev_tokens=prev)
    ours = seen["probs"].sort(dim=-1, descending=True).values           # sample_top_p works in sorted order
    s = RepetitionPenaltyLogitsProcessor(penalty=penalty)(prev, z.clone())
    s = TemperatureLogitsWarper(temperature)(prev, s)
    if top_k: s = TopKLogitsWarper(top_k)(prev, s)
    if top_p < 1: s = TopPLogitsWarper(top_p)(prev, s)
    want = torch.softmax(s, -1).sort(dim=-1, descending=True).values
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=1e-5)


def test_top_k_one_is_greedy():
    z = random_logits()
    torch.manual_seed(0)
    for temperature in (0.5, 1.0, 3.0):
        assert torch.equal(next_token(z, temperature, 0.9, top_k=1), z.argmax(-1))


# --- through the loop ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_and_ours():
    "A random LlamaForCausalLM and the same weights in a llama_lit Llama (the shipped tokenizer's vocabulary)."
    tok = Tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=tok.n_words, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                   initializer_range=0.2, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    params = hf_config_to_params(hf.config.to_dict())
    init_model_parallel()
    model = Transformer(ModelArgs(**params, max_batch_size=2, max_seq_len=64))
    model.load_state_dict(convert_hf_state_dict(hf.state_dict(), params), strict=True)
    return hf, Llama(model.eval(), tok)


@pytest.mark.parametrize("penalty", [1.0, 1.3, 2.0])
def test_greedy_with_penalty_equals_transformers_generate(hf_and_ours, penalty):
    """A ragged batch of two through our loop; each prompt alone through transformers (no padding there)."""
    hf, llm = hf_and_ours
    prompts = [llm.tokenizer.encode(s, bos=True, eos=False) for s in ("To be, or not to be", "Now is the winter of")]
    n = 24
    ours, _ = llm.generate(prompts, n, temperature=0.0, repetition_penalty=penalty)
    for prompt, got in zip(prompts, ours):
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                              repetition_penalty=penalty, eos_token_id=llm.tokenizer.stop_tokens, pad_token_id=0)
        row = ref[0, ids.shape[1]:].tolist()
        stop = [j for j, t in enumerate(row) if t in llm.tokenizer.stop_tokens]
        assert got == row[: stop[0] if stop else n]


def test_penalty_changes_greedy_and_breaks_a_loop(hf_and_ours):
    hf, llm = hf_and_ours
    prompt = [llm.tokenizer.encode("ROMEO:", bos=True, eos=False)]
    plain = llm.generate(prompt, 40, temperature=0.0)[0][0]
    penal = llm.generate(prompt, 40, temperature=0.0, repetition_penalty=1.5)[0][0]
    assert plain != penal
    assert len(set(penal)) >= len(set(plain))


# --- the API and the CLI refuse bad values -----------------------------------------------------------------

BAD = [(dict(top_k=-1), "top_k must be an integer >= 0"), (dict(top_k=1.5), "top_k must be an integer >= 0"),
       (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
       (dict(repetition_penalty=-1.2), "repetition_penalty must be a finite number > 0"),
       (dict(repetition_penalty=float("nan")), "got nan"), (dict(repetition_penalty=math.inf), "got inf")]


@pytest.mark.parametrize("kw,msg", BAD)
def test_api_refuses(hf_and_ours, kw, msg):
    _, llm = hf_and_ours
    with pytest.raises(ValueError, match=msg):
        llm.generate([[1, 5, 6]], 4, **kw)
    with pytest.raises(ValueError, match=msg):
        llm.text_completion(["hi"], max_gen_len=4, **kw)
    with pytest.raises(ValueError, match=msg):
        llm.chat_completion([[{"role": "user", "content": "hi"}]], max_gen_len=4, **kw)
    with pytest.raises(ValueError, match=msg):
        "".join(llm.stream("hi", 4, **kw))


def test_stream_equals_batch_with_sampling_options(hf_and_ours):
    _, llm = hf_and_ours
    kw = dict(temperature=0.0, repetition_penalty=1.3, top_k=3)
    assert "".join(llm.stream("ROMEO:", 16, **kw)) == llm.text_completion(["ROMEO:"], max_gen_len=16, **kw)[0]["generation"]


@pytest.mark.parametrize("argv,msg", [(["--top-k", "-1"], "top_k must be an integer >= 0"),
                                      (["--repetition-penalty", "0"], "repetition_penalty must be a finite number > 0"),
                                      (["--repetition-penalty", "nan"], "got nan")])
@pytest.mark.parametrize("command", [["generate", "hi"], ["chat"]])
def test_cli_refuses_before_loading(capsys, command, argv, msg):
    code = main([*command, "--ckpt-dir", "/no/such/dir", *argv])      # refused before the missing checkpoint is noticed
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and msg in err, err


def test_cli_flags_reach_the_model(capsys):
    """The shipped Shakespeare model: top-k and the repetition penalty change what it prints after this prompt,
    to exactly what the API returns."""
    prompt, argv = "ROMEO:\nI", ["--temperature", "0", "--max-gen-len", "48", "--top-k", "4", "--repetition-penalty", "1.3"]
    assert main(["generate", prompt, *argv]) == 0
    out = capsys.readouterr().out
    llm = Llama.build(max_batch_size=1)
    want = llm.text_completion([prompt], temperature=0.0, max_gen_len=48, top_k=4, repetition_penalty=1.3)[0]
    plain = llm.text_completion([prompt], temperature=0.0, max_gen_len=48)[0]
    assert out == prompt + want["generation"] + "\n" + "=" * 40 + "\n"
    assert want != plain


def test_cli_chat_with_flags(ckpts, monkeypatch, capsys):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("Who is Hamlet?\n"))
    code = main(["chat", "--ckpt-dir", str(ckpts[1]), "--temperature", "0", "--max-gen-len", "8", "--max-seq-len", "64",
                 "--repetition-penalty", "1.3", "--top-k", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "assistant:" in out
