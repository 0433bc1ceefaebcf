"""The fast path (chapter 07) generates the same tokens as the reference path of chapters 03-05: eager and compiled,
through Llama.build's default, and the benchmark script runs end to end (tiny model: a smoke test, not a timing)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llama_lit.build  # noqa: F401  (Llama.build)
from fairscale.nn.model_parallel.layers import ColumnParallelLinear
from llama_lit.config import ModelArgs
from llama_lit.fast import FastForward
from llama_lit.generation import Llama
from llama_lit.model import Transformer
from llama_lit.parallel import init_model_parallel

ROOT = Path(__file__).resolve().parents[1]


class NoStop:
    eos_id, pad_id, stop_tokens, n_words = -1, -1, [], 1 << 30   # n_words: every row of the logits is a token


@pytest.fixture(scope="module", autouse=True)
def one_process():
    init_model_parallel()                                               # Transformer needs the (1-process) group


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    args = ModelArgs(dim=128, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=512, multiple_of=32,
                     max_batch_size=4, max_seq_len=64)
    return Transformer(args).eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in (5, 9, 14)]


def test_compiled_decode_gives_the_same_tokens(model):
    ref = Llama(model, NoStop()).generate(prompts(), 24, temperature=0)[0]
    out = Llama(model, NoStop(), forward=FastForward(model, compile=True)).generate(prompts(), 24, temperature=0)[0]
    assert out == ref


class Dense(torch.nn.Module):
    "A float matrix as a module of its own, sharing the tensor: what quant or the kernels swap in, in miniature."
    def __init__(self, w):
        super().__init__()
        self.register_buffer("weight", w.detach())

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight)


class Stacked(Dense):
    "A toy `fuse`: one matmul over the rows of several matrices stacked."
    def __init__(self, mods):
        super().__init__(torch.cat([m.weight for m in mods]))


def test_stand_ins_are_submodules_of_the_fast_forward_and_agree(model):
    ref = Llama(model, NoStop()).generate(prompts(), 24, temperature=0)[0]
    ff = FastForward(model, fuse=Stacked, float_linear=lambda m: Dense(m.weight))
    assert all(sorted(fast) == ["w13", "w2", "wo", "wqkv"] for fast in ff.linears) and isinstance(ff.output, Dense)
    assert "(wqkv): Stacked()" in repr(ff)                             # registered: print shows them
    assert all(isinstance(layer.attention.wq, ColumnParallelLinear) for layer in model.layers)   # the model is untouched
    assert Llama(model, NoStop(), forward=ff).generate(prompts(), 24, temperature=0)[0] == ref
    none = FastForward(model, fuse=lambda mods: None, float_linear=lambda m: None)       # nothing made: the model's own
    assert all(len(fast) == 0 for fast in none.linears) and none.output is None


def test_a_module_swapped_into_the_model_is_called_as_a_module():
    m, calls = small_model(), []
    class Counting(Dense):
        def forward(self, x):
            calls.append(tuple(x.shape)); return super().forward(x)
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        ref = FastForward(m)(ids, 0)
        m.layers[0].attention.wq = Counting(m.layers[0].attention.wq.weight)   # what quant.swap_linears does
        out = FastForward(m)(ids, 0)
    assert calls == [(1, 3, 64)] and torch.equal(out, ref)


def test_build_uses_the_fast_path_and_agrees(tmp_path):
    fast, ref = Llama.build(), Llama.build(fast=False)               # the shipped Shakespeare model
    assert isinstance(fast.forward, FastForward) and ref.forward is ref.model
    a = fast.text_completion(["ROMEO:", "JULIET: O"], temperature=0, max_gen_len=40)
    b = ref.text_completion(["ROMEO:", "JULIET: O"], temperature=0, max_gen_len=40)
    assert [x["generation"] for x in a] == [x["generation"] for x in b]
    lp = fast.text_completion(["ROMEO:"], temperature=0, max_gen_len=8, logprobs=True)   # log-probs: reference forward
    assert len(lp[0]["logprobs"]) == len(lp[0]["tokens"]) > 0


def test_benchmark_script_runs_and_ends_with_the_ratio():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--tiny", "--runs", "1", "--new-tokens", "4",
                        "--batches", "1,2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert "generated the same 4 tokens" in r.stdout
    assert lines[-1].startswith("decode ratio vs transformers: ") and float(lines[-1].split(": ")[1]) > 0


def test_benchmark_refuses_bad_arguments():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--batches", "8"], capture_output=True, text=True)
    assert r.returncode == 2 and "must include 1" in r.stderr


def small_model(**kw):
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32,
                                 max_batch_size=2, max_seq_len=32, **kw)).eval()


def static_type(t):
    return getattr(t, "_dynamo_static_input_type", None)             # what torch._dynamo.mark_static_address sets


def test_caches_and_rope_tables_are_marked_static_and_remarked_after_a_move():
    m = small_model()
    ff = FastForward(m, compile=True)                                   # marked for the compiled step (compiled lazily)
    st = ff.static_tensors()
    assert len(st) == 2 * m.params.n_layers + 2                        # K and V per layer, cos, sin
    assert all(static_type(t) for t in st)
    assert st[0] is ff.caches[0][0] and st[-2] is ff.cos and st[-1] is ff.sin
    m.double()                                                          # new cache storage: FastForward re-creates its views
    with torch.inference_mode():
        ff(torch.tensor([[1, 2, 3]]), 0)
    assert ff.caches[0][0].data_ptr() == m.layers[0].attention.cache_k.data_ptr()
    assert ff.caches[0][0].dtype == torch.float64
    assert all(static_type(t) for t in ff.static_tensors())


def test_compiled_step_mutates_only_static_inputs():
    "CUDA graphs (mode reduce-overhead) skip a graph that writes in place into an input not marked static: check the graph dynamo hands its backend."
    import operator
    m = small_model()
    ff = FastForward(m)
    ff._mark_static()                                                  # as compile=True does before compiling
    graphs = []
    def backend(gm, example_inputs):
        graphs.append(gm); return gm
    step = torch.compile(ff._decode_static, backend=backend, dynamic=False)
    with torch.inference_mode():
        ff(torch.tensor([[1, 2, 3], [4, 5, 6]]), 0)
        step(ff._embed(torch.tensor([[7], [8]])), torch.tensor([3]), 32)
    assert len(graphs) == 1                                            # one graph, no break
    inputs = list(graphs[0].graph.find_nodes(op="placeholder"))
    mutated = [n for n in inputs if any(u.target is operator.setitem and u.args[0] is n for u in n.users)]
    assert len(mutated) == 2 * m.params.n_layers                       # every layer's K and V cache, written in place
    static = {n.name for n in inputs if n.meta.get("tensor_dict", {}).get("_dynamo_static_input_type")}
    assert all(n.name in static for n in mutated)
    assert {n.name for n in inputs} - static == {"l_h_", "l_pos_"}   # only the step's own inputs get copied


def tiny_long(max_seq_len, max_batch_size=1):
    "One tiny layer with a long context: the caches and RoPE tables are a few MB even at 131072 positions."
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64, multiple_of=32,
                                 max_batch_size=max_batch_size, max_seq_len=max_seq_len)).eval()


@pytest.mark.parametrize("max_seq_len", [2048, 65536, 131072])
def test_spans_fit_dynamos_recompile_limit(max_seq_len):
    "One compiled graph per span: more spans than recompile_limit and the longest contexts decode eagerly (powers of two from 128 need 10 at 65536)."
    ff = FastForward(tiny_long(max_seq_len))
    spans = [ff.span(p) for p in range(max_seq_len)]
    assert len(set(spans)) <= torch._dynamo.config.recompile_limit
    assert all(s > p for p, s in enumerate(spans)) and max(spans) == max_seq_len   # every position is covered
    assert spans == sorted(spans)
    with torch._dynamo.config.patch(recompile_limit=3):                  # read from dynamo's config, not assumed to be 8
        assert len({ff.span(p) for p in range(0, max_seq_len, 7)} | {ff.span(max_seq_len - 1)}) <= 3


def test_span_ladder_keeps_powers_of_two_while_they_fit_and_refuses_a_zero_limit():
    from llama_lit.fast import span_ladder
    assert span_ladder(2048, 8) == (128, 256, 512, 1024, 2048)
    assert span_ladder(100, 8) == (100,) and span_ladder(65536, 1) == (65536,)
    with pytest.raises(ValueError, match="recompile_limit"):
        span_ladder(2048, 0)


def test_compiled_decode_compiles_every_span_and_batch_size(monkeypatch):
    "Dynamo itself: with fail_on_recompile_limit_hit, a span or batch size past the budget raises instead of running eagerly."
    import functools
    graphs, real = [], torch.compile
    def backend(gm, example_inputs):
        graphs.append(gm); return gm
    @functools.wraps(real)                                              # keeps torch.compile's signature for FastForward
    def recording_compile(fn, **kw): return real(fn, **{**kw, "backend": backend, "mode": None})
    monkeypatch.setattr(torch, "compile", recording_compile)
    torch._dynamo.reset()
    m = tiny_long(65536, max_batch_size=2)
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True), torch.inference_mode():
            a = FastForward(m, compile=True)
            starts = sorted({a.span(p) for p in range(65536)})[:-1]     # one position in each span
            for p in [0] + starts: a(torch.tensor([[1]]), p)
            n_spans = len(graphs)
            assert n_spans == len(starts) + 1
            a(torch.tensor([[1], [2]]), 5)                              # another batch size: its own graph
            assert len(graphs) == n_spans + 1
            b = FastForward(m, compile=True)                            # a second model's graphs do not push a's out
            for p in [0] + starts: b(torch.tensor([[1]]), p)
            assert len(graphs) == 2 * n_spans + 1
    finally:
        torch._dynamo.reset()


def test_lean_decode_step_gives_the_old_steps_logits_on_the_shipped_model():
    "The one-token step with fewer ops (2-D activations, RoPE on q|k at once) against the step it replaces."
    from fastcore.test import test_close
    llm = Llama.build()                                                # the shipped model, as the CLI builds it
    lean = llm.forward
    old = FastForward(llm.model, lean_decode=False)
    old.linears, old.output = lean.linears, lean.output                # the same (fused, kernel) modules
    assert lean.lean_decode and not old.lean_decode
    ids = torch.tensor(llm.tokenizer.encode("ROMEO: O", bos=True, eos=False))[None].repeat(2, 1)   # (2, seqlen)
    with torch.inference_mode():
        lean(ids, 0)
        tok = ids[:, -1:]
        for pos in range(ids.shape[1], ids.shape[1] + 6):               # each writes the same cache rows
            a, b = old(tok, pos), lean(tok, pos)
            assert b.shape == a.shape == (2, 1, llm.model.params.vocab_size)
            test_close(b, a, eps=1e-4)
            tok = a[:, -1].argmax(-1, keepdim=True)
    off = FastForward(llm.model, sdpa=False)                           # an earlier step turned off: no lean step
    assert not off.lean_decode


def test_an_embedding_module_without_a_table_is_called():
    "What chapter 12 swaps in for a quantized file: forward(ids) -> rows, no `.weight` (here: rows of the table)."
    m = small_model()
    class Rows(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table, self.calls = table.detach().clone(), 0
        def forward(self, ids):
            self.calls += 1; return self.table[ids]
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.inference_mode():
        ff = FastForward(m)
        ref = [ff(ids, 0), ff(ids[:, :1], 3)]
        m.tok_embeddings = Rows(m.tok_embeddings.weight)
        ff = FastForward(m)
        out = [ff(ids, 0), ff(ids[:, :1], 3)]                           # prefill and a lean decode step
    assert m.tok_embeddings.calls == 2 and all(torch.equal(a, b) for a, b in zip(out, ref))


def test_compiled_step_keeps_only_its_own_guards_and_compiles_anew_after_a_move(monkeypatch):
    "Positions inside one span reuse one graph; a move of the model (new caches) gets a new compiled step, right again."
    import functools
    from llama_lit.fast import step_guards
    graphs, filters, real = [], [], torch.compile
    def backend(gm, example_inputs):
        graphs.append(gm); return gm
    @functools.wraps(real)
    def recording_compile(fn, **kw):
        filters.append(kw["options"]["guard_filter_fn"])
        return real(fn, **{**kw, "backend": backend, "mode": None, "options": {"guard_filter_fn": step_guards}})
    monkeypatch.setattr(torch, "compile", recording_compile)
    torch._dynamo.reset()
    m = small_model()
    try:
        with torch.inference_mode():
            a, ref = FastForward(m, compile=True), FastForward(m)
            assert filters == [step_guards]
            a(torch.tensor([[1, 2, 3]]), 0)
            for p in range(3, 12): a(torch.tensor([[p]]), p)             # one span (32 rows): one graph
            assert len(graphs) == 1
            m.double()                                                  # new caches: the old graph must not run
            out = a(torch.tensor([[5]]), 12)
            assert len(filters) == 2 and len(graphs) == 2 and out.dtype == torch.float32
            ref(torch.tensor([[1, 2, 3]]), 0)
            for p in range(3, 12): ref(torch.tensor([[p]]), p)
            torch.testing.assert_close(out, ref(torch.tensor([[5]]), 12).float(), rtol=1e-4, atol=1e-4)
    finally:
        torch._dynamo.reset()
