"""The paged engine (chapter 13) against `Llama.generate`, request by request: greedy tokens equal for requests that
arrive at different steps with different lengths, on the shipped model and on SmolLM2's Q4_1 GGUF, through chunked
prefill, tiny blocks, a queue, preemption under a tiny pool; the pool whole again after finish and abort; seeded
sampling the same whatever else runs; stop tokens, log-probabilities, the context limit; bad input refused. One test
breaks the block table on purpose and checks that the equality test would catch it."""
import pytest
import torch

import llama_lit.build  # noqa: F401  (Llama.build)
import llama_lit.paged as paged
from llama_lit.generation import Llama
from llama_lit.paged import BlockPool, Engine, RequestOutput, SamplingParams

TEXTS = ["ROMEO:", "To be, or not to be", "KING HENRY. Now then, my lords, what say you",
         "First Citizen:\nBefore we proceed any further, hear me speak.", "O"]


@pytest.fixture(scope="module")
def llm():
    return Llama.build()


@pytest.fixture(scope="module")
def prompts(llm):
    return [llm.tokenizer.encode(t, bos=True, eos=False) for t in TEXTS]


@pytest.fixture(scope="module")
def want(llm, prompts):
    "What Llama.generate gives each prompt alone, greedy, 24 tokens."
    return [llm.generate([p], 24, temperature=0.0)[0][0] for p in prompts]


def run(engine, arrivals, params):
    """Add the (step, request_id, prompt) arrivals at their steps, step until done: {id: tokens}, {id: outputs}."""
    tokens, outs, step = {rid: [] for _, rid, _ in arrivals}, {rid: [] for _, rid, _ in arrivals}, 0
    pending = sorted(arrivals, key=lambda a: a[0])
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            _, rid, prompt = pending.pop(0)
            engine.add_request(rid, prompt, params(rid) if callable(params) else params)
        for o in engine.step():
            tokens[o.request_id] += o.token_ids; outs[o.request_id].append(o)
        step += 1
    return tokens, outs


def staggered(prompts):
    "Requests arriving at steps 0, 0, 3, 5, 9: the later ones join a batch that is already decoding."
    return [(s, str(i), p) for i, (s, p) in enumerate(zip((0, 0, 3, 5, 9), prompts))]


@pytest.mark.parametrize("block_size,max_step_tokens,invariant", [(16, 256, True), (3, 256, True), (1, 7, True),
                                                                    (4, 12, True), (4, 12, False)])
def test_greedy_equals_generate_for_staggered_requests(llm, prompts, want, block_size, max_step_tokens, invariant):
    e = Engine(llm, block_size=block_size, max_running=4, max_step_tokens=max_step_tokens, batch_invariant=invariant)
    tokens, outs = run(e, staggered(prompts), SamplingParams(max_tokens=24))
    assert [tokens[str(i)] for i in range(len(prompts))] == want
    assert e.pool.n_free() == e.pool.n_blocks and not e.has_unfinished()
    for i, o in outs.items():                                    # every step's output: one token, the last one ends
        assert [x.finished for x in o] == [False] * (len(o) - 1) + [True]
        assert [x.completion_tokens for x in o] == list(range(1, len(o) + 1))
        assert o[-1].finish_reason == "length" and {x.prompt_tokens for x in o} == {len(prompts[int(i)])}


def test_decode_queries_one_call_each_or_padded_in_one_call():
    seqs = [paged._Seq(str(i), i, n, [1] * (n + 1), SamplingParams(), None, blocks=[i]) for i, n in enumerate((5, 5, 3))]
    chunks = [paged._Chunk(s, s.prompt_len, 1) for s in seqs]                       # contexts of 6, 6 and 4 positions
    (first, n, slots, mask, lengths), = paged.step_batch(chunks, 8, "cpu").decodes   # gathered at once, one call a row
    assert (first, n, tuple(slots.shape), mask, lengths) == (0, 3, (3, 6), None, [6, 6, 4])
    (first, n, slots, mask, lengths), = paged.step_batch(chunks, 8, "cpu", pad=True).decodes
    assert (first, n, slots.shape, mask.shape, lengths) == (0, 3, (3, 6), (3, 1, 1, 6), None)
    assert slots[2].tolist() == [16, 17, 18, 19, 0, 0] and mask[2, 0, 0].tolist() == [True] * 4 + [False] * 2


def test_a_broken_block_table_is_caught(llm, prompts, want, monkeypatch):
    "The equality test has teeth: slots off by one inside a block (two positions share one) change the tokens."
    right = paged.slot_ids
    monkeypatch.setattr(paged, "slot_ids", lambda t, p, bs: right(t, p, bs) - (p % bs > 0).long())
    tokens, _ = run(Engine(llm, block_size=4, max_running=4), staggered(prompts), SamplingParams(max_tokens=24))
    assert [tokens[str(i)] for i in range(len(prompts))] != want


def test_queue_and_one_at_a_time(llm, prompts, want):
    e = Engine(llm, max_running=1, max_step_tokens=8)
    seen = []
    orig = e.schedule
    def schedule():
        chunks = orig(); seen.append(len(e.running)); return chunks
    e.schedule = schedule
    assert e.generate(prompts, SamplingParams(max_tokens=24)) == want
    assert max(seen) == 1


def test_preemption_under_a_tiny_pool_gives_the_same_tokens(llm, prompts, want, monkeypatch):
    preempted = []
    orig = Engine._preempt
    monkeypatch.setattr(Engine, "_preempt", lambda self, seq: (preempted.append(seq.request_id), orig(self, seq)))
    e = Engine(llm, block_size=4, n_blocks=12, max_running=5, max_step_tokens=16)   # 48 slots: one request at most
    assert e.generate(prompts, SamplingParams(max_tokens=24)) == want
    assert preempted and e.pool.n_free() == e.pool.n_blocks


def test_abort_frees_blocks_at_once_and_others_go_on(llm, prompts, want):
    e = Engine(llm, block_size=4, max_running=4)
    for i, p in enumerate(prompts[:3]): e.add_request(str(i), p, SamplingParams(max_tokens=24))
    got = {str(i): [] for i in range(3)}
    for _ in range(3):
        for o in e.step(): got[o.request_id] += o.token_ids
    held = len(e.seqs["1"].blocks)
    free = e.pool.n_free()
    e.abort("1"); e.abort("1"); e.abort("never-added")                 # twice, and unknown: no-ops after the first
    assert e.pool.n_free() == free + held
    first = e.step()
    assert [o for o in first if o.request_id == "1"] == [RequestOutput("1", [], None, True, "abort", len(prompts[1]), 3)]
    for o in first: got[o.request_id] += o.token_ids
    while e.has_unfinished():
        for o in e.step():
            assert o.request_id != "1"
            got[o.request_id] += o.token_ids
    assert got["0"] == want[0] and got["2"] == want[2] and got["1"] == want[1][:3]
    assert e.pool.n_free() == e.pool.n_blocks
    e.add_request("w", prompts[0], SamplingParams()); e.abort("w")     # aborted while waiting
    assert e.step()[0].finish_reason == "abort" and not e.has_unfinished()


def test_seeded_sampling_is_the_same_whatever_else_runs(llm, prompts):
    sp = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=123)
    alone = Engine(llm).generate([prompts[0]], sp)[0]
    torch.manual_seed(0)
    others = [SamplingParams(max_tokens=n, temperature=0.8) for n in (5, 30, 9)]       # the global generator
    mixed = Engine(llm, max_running=3, max_step_tokens=10).generate(
        [prompts[1], prompts[2], prompts[0], prompts[3]], [others[0], others[1], sp, others[2]])
    assert mixed[2] == alone
    assert Engine(llm).generate([prompts[0]], SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=124))[0] \
        != alone


def test_stop_tokens_end_a_request_and_are_not_returned(llm, prompts, want):
    stop = want[1][5]
    e = Engine(llm)
    tokens, outs = run(e, [(0, "a", prompts[1]), (0, "b", prompts[2])],
                       lambda rid: SamplingParams(max_tokens=24, stop_token_ids=(stop,) if rid == "a" else ()))
    assert tokens["a"] == want[1][: want[1].index(stop)] and tokens["b"] == want[2]
    assert outs["a"][-1].finish_reason == "stop" and outs["a"][-1].token_ids == []
    eos = llm.tokenizer.stop_tokens[0]                             # the tokenizer's own stop: always stops
    e2 = Engine(llm)
    e2.add_request("c", prompts[0], SamplingParams(max_tokens=5))
    e2.forward = lambda batch: torch.nn.functional.one_hot(torch.tensor([eos]), llm.model.params.vocab_size).float()
    assert e2.step() == [RequestOutput("c", [], None, True, "stop", len(prompts[0]), 0)]


def test_logprobs_match_generate(llm, prompts):
    toks, lps = llm.generate([prompts[2]], 10, temperature=0.0, logprobs=True)
    _, outs = run(Engine(llm), [(0, "a", prompts[2])], SamplingParams(max_tokens=10, logprobs=True))
    assert [t for o in outs["a"] for t in o.token_ids] == toks[0]
    mine = torch.tensor([lp for o in outs["a"] for lp in o.logprobs])
    torch.testing.assert_close(mine, torch.tensor(lps[0]), atol=1e-4, rtol=0)
    assert all(o.logprobs is None for o in run(Engine(llm), [(0, "b", prompts[2])], SamplingParams(max_tokens=3))[1]["b"])


def test_the_context_ends_a_request_with_length(llm):
    n = llm.model.params.max_seq_len
    prompt = [1] + llm.tokenizer.encode("ROMEO: " * 200, bos=False, eos=False)[: n - 6]   # 5 positions left
    want = llm.generate([prompt], 50, temperature=0.0)[0][0]
    tokens, outs = run(Engine(llm, block_size=7), [(0, "a", prompt)], SamplingParams(max_tokens=50))
    assert tokens["a"] == want and len(want) == 5 and outs["a"][-1].finish_reason == "length"


@pytest.mark.parametrize("prompt,params,match", [
    ([], SamplingParams(), "at least one token"),
    ([1, 99999], SamplingParams(), "not in the vocabulary"),
    ([1, -1], SamplingParams(), "not in the vocabulary"),
    ([1, 2.0], SamplingParams(), "not in the vocabulary"),
    ([1] * 256, SamplingParams(), "no room"),
    ([1] * 80, SamplingParams(), "more than the pool"),
    ([1], SamplingParams(max_tokens=0), "max_tokens"),
    ([1], SamplingParams(temperature=float("inf")), "temperature"),
    ([1], SamplingParams(top_p=1.5), "top_p"),
    ([1], SamplingParams(top_k=-1), "top_k"),
    ([1], SamplingParams(seed=1.5), "seed"),
    ([1], SamplingParams(seed=True), "seed"),
    ([1], SamplingParams(logprobs=1), "logprobs"),
    ([1], {"max_tokens": 4}, "SamplingParams"),
])
def test_bad_requests_are_refused(llm, prompt, params, match):
    e = Engine(llm, block_size=16, n_blocks=4)
    with pytest.raises(ValueError, match=match): e.add_request("x", prompt, params)
    assert not e.has_unfinished() and e.pool.n_free() == 4


def test_bad_engines_and_duplicates_are_refused(llm, prompts):
    for kw, match in ((dict(block_size=0), "block_size"), (dict(n_blocks=0), "n_blocks"),
                      (dict(max_running=0), "max_running"), (dict(max_running=8, max_step_tokens=4), "max_step_tokens")):
        with pytest.raises(ValueError, match=match): Engine(llm, **kw)
    e = Engine(llm)
    e.add_request("a", prompts[0], SamplingParams())
    with pytest.raises(ValueError, match="already running"): e.add_request("a", prompts[1], SamplingParams())
    with pytest.raises(ValueError, match="idle engine"): e.generate([prompts[0]], SamplingParams())
    with pytest.raises(ValueError, match="2 prompts but 1"):
        Engine(llm).generate(prompts[:2], [SamplingParams()])
    while e.has_unfinished(): e.step()
    e.add_request("a", prompts[0], SamplingParams())               # finished: the id may be used again


def test_default_pool_holds_max_running_full_contexts(llm):
    e = Engine(llm, block_size=16, max_running=3)
    p = llm.model.params
    assert e.pool.n_blocks == 3 * p.max_seq_len // 16 and e.max_seq_len == p.max_seq_len
    assert e.pool.k[0].shape == (e.pool.n_blocks, 16, p.n_kv_heads, p.dim // p.n_heads)
    assert e.step() == [] and not e.has_unfinished()


def test_block_pool_refuses_double_free():
    pool = BlockPool(1, 3, 2, 1, 4)
    b = pool.allocate(2)
    pool.free(b)
    with pytest.raises(RuntimeError, match="free one"): pool.free(b)


@pytest.fixture(scope="module")
def smollm2():
    from llama_lit.assets import smollm2_path
    try: return Llama.build(smollm2_path())
    except FileNotFoundError as e: pytest.skip(str(e))


def test_smollm2_greedy_equals_generate(smollm2):
    """SmolLM2's Q4_1 kernels give each row the same numbers whatever the batch; so does attention one call per
    query (batch_invariant=True, the default): every request's tokens equal generate's, prompts of equal length
    included. Each prompt fits one step (max_step_tokens): a chunk boundary changes SDPA's blocking, and 4-bit
    activations amplify the last bit."""
    ps = [smollm2.tokenizer.encode(t, bos=smollm2.tokenizer.add_bos, eos=False) for t in TEXTS[:4]]
    ps += [p[:-1] + [p[-1] + 1] for p in ps[:2]]                           # two more of the same lengths
    want = [smollm2.generate([p], 12, temperature=0.0)[0][0] for p in ps]
    arrivals = [(s, str(i), p) for i, (s, p) in enumerate(zip((0, 0, 2, 4, 0, 2), ps))]
    tokens, _ = run(Engine(smollm2, block_size=8, max_running=6), arrivals, SamplingParams(max_tokens=12))
    assert [tokens[str(i)] for i in range(6)] == want


# --- prefix caching ----------------------------------------------------------------------------------------------

SYSTEM = "You are a player in a company of Shakespeare's men. Answer in verse, and briefly. "


def test_prefix_caching_shares_a_system_prompt(llm):
    system = llm.tokenizer.encode(SYSTEM, bos=True, eos=False)
    asks = [system + llm.tokenizer.encode(t, bos=False, eos=False) for t in ("ROMEO:", "KING HENRY:", "O", "ROMEO:")]
    want = [llm.generate([q], 16, temperature=0.0)[0][0] for q in asks]
    e = Engine(llm, block_size=4, max_running=4, prefix_caching=True)
    tokens, _ = run(e, [(0, "0", asks[0]), (2, "1", asks[1]), (2, "2", asks[2]), (30, "3", asks[3])],
                    SamplingParams(max_tokens=16))
    assert [tokens[str(i)] for i in range(4)] == want
    full = len(system) // 4 * 4
    assert e.n_prefix_hits >= 2 * full + (len(asks[3]) - 1) // 4 * 4    # 3 repeats request 0: all but its last block
    assert e.pool.n_free() == e.pool.n_blocks
    off = Engine(llm, block_size=4, max_running=4)
    run(off, [(0, "0", asks[0]), (2, "1", asks[1])], SamplingParams(max_tokens=4))
    assert off.n_prefix_hits == 0


def test_prefix_digests_chain_the_whole_prefix(llm):
    "Equal tokens in block 1 after different blocks 0 share nothing (a per-block hash would share them, wrongly)."
    a = [1, 1080, 4041, 4028] + [438, 310, 4015, 531] + [333, 4046]
    b = [1, 620, 1527, 4017] + [438, 310, 4015, 531] + [333, 4046]
    e = Engine(llm, block_size=4, prefix_caching=True)
    assert e.generate([a], SamplingParams(max_tokens=10)) == [llm.generate([a], 10, temperature=0.0)[0][0]]
    assert e.generate([b], SamplingParams(max_tokens=10)) == [llm.generate([b], 10, temperature=0.0)[0][0]]
    assert e.n_prefix_hits == 0
    assert paged.prefix_digests(a, 4)[1] != paged.prefix_digests(b, 4)[1]


def test_prefix_caching_with_preemption_and_eviction(llm, prompts, want):
    "A tiny pool: cached blocks are evicted for new ones, preempted requests find theirs again; tokens unchanged."
    e = Engine(llm, block_size=4, n_blocks=12, max_running=5, max_step_tokens=16, prefix_caching=True)
    assert e.generate(prompts, SamplingParams(max_tokens=24)) == want
    assert e.n_preempted > 0 and e.n_prefix_hits > 0
    assert e.generate(prompts[:2], SamplingParams(max_tokens=24)) == want[:2]
    assert e.pool.n_free() == e.pool.n_blocks and sum(e.pool.refs) == 0


def test_one_token_prompts_one_token_answers_and_the_reference_forward(llm):
    "A 1-token prompt (its prefill is a decode), max_tokens=1, and a model built with fast=False (no FastForward yet)."
    want = [llm.generate([[1]], 6, temperature=0.0)[0][0], llm.generate([[1, 352]], 1, temperature=0.0)[0][0]]
    e = Engine(llm)
    assert e.generate([[1], [1, 352]], [SamplingParams(max_tokens=6), SamplingParams(max_tokens=1)]) == want
    slow = Llama.build(fast=False)
    assert not isinstance(slow.forward, paged.FastForward)
    assert Engine(slow).generate([[1], [1, 352]], [SamplingParams(max_tokens=6), SamplingParams(max_tokens=1)]) == want


def test_one_matmul_per_weight_per_step_over_every_token(llm, prompts):
    "The point of the engine: each layer's wqkv runs once per step, its rows every scheduled token of every request."
    rows = []
    hook = llm.forward.linears[0]["wqkv"].register_forward_hook(lambda m, args, out: rows.append(args[0].shape[-2]))
    try:
        e = Engine(llm, max_running=4, max_step_tokens=16)
        for i, p in enumerate(prompts[:3]): e.add_request(str(i), p, SamplingParams(max_tokens=5))
        planned = []
        orig = e.schedule
        e.schedule = lambda: (chunks := orig(), planned.append(sum(c.n for c in chunks)))[0]
        while e.has_unfinished(): e.step()
    finally:
        hook.remove()
    assert rows == [n for n in planned if n] and rows[0] == 16 and 3 in rows     # chunked first step; 3 decodes
