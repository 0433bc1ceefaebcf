#!/usr/bin/env python
"""Generation speed, side by side in one process on the same random weights: llama_lit (the fast path of chapter
07; with --reference also the readable path of chapters 03-05) against Hugging Face transformers' LlamaForCausalLM.generate
(its default cache and attention, and its static cache; with --compile also torch.compile on both sides).

Same prompt, greedy, the same number of new tokens. In float32 the generated tokens must agree before any speed is
reported; in bfloat16/float16 two correct programs may part at a near-tie of the top two logits, so a divergence is
reported (the shared greedy prefix, and whether the first difference is such a near-tie) and the run goes on.
Each row is the median of --runs runs after one warm-up run. Prefill tok/s = batch*prompt_len / time to first token;
decode tok/s = batch*(new_tokens-1) / (time of the last token - time of the first). Peak memory: the rise of the
process's peak RSS during the run on CPU (Linux VmHWM, reset before each run), torch.cuda.max_memory_allocated on CUDA.
On CUDA also the memory-bandwidth bound (bytes each step reads per GPU / that GPU's bandwidth) and the fraction of it
reached. The last line reads `decode ratio vs transformers: R` (llama_lit fast path / transformers default, batch 1)
whenever transformers runs (not with --quant or --skip-transformers).

    python bench/generate.py                       # CPU float32, ~125M-parameter LLaMA, under a minute on 2 cores
    python bench/generate.py                       # on a GPU: the Llama-2-7B shape, bfloat16, plus the bandwidth bound
    python bench/generate.py --quant int4 --compile --skip-transformers   # torch's int4 kernels, CUDA graphs on a GPU
    python bench/generate.py --device cuda --show-config                  # what a GPU run would use (no GPU needed)
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import statistics
import sys
import time

import torch

from llama_lit import Llama
from llama_lit.config import LLAMA_CONFIGS, ModelArgs, count_params
from llama_lit.parallel import init_model_parallel, meta_init
from llama_lit.attention import kv_cache_bytes
from llama_lit.model import Transformer, materialize_buffers
from llama_lit.fast import FastForward
from llama_lit.checkpoint import convert_meta_state_dict_to_hf, params_to_hf_config
from llama_lit.quant import QUANTS, bits_per_weight, matmul_shapes, quantize_model

CPU_DEFAULT = dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, vocab_size=32000, multiple_of=256)   # 124.7M
TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32)
GPU_DEFAULT = "llama2-7b"                  # what the help, the README and chapter 07 promise on a GPU

# Memory bandwidth by the vendors' datasheets (bytes/s), matched on torch.cuda.get_device_name (first match wins).
SPEC_BANDWIDTH = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100 80GB", 1.935e12), ("A100", 1.555e12)]
# gpt-fast's README (pytorch-labs/gpt-fast), Llama-2-7B, batch 1, torch.compile: measured on an A100 80GB, not here.
GPT_FAST_A100 = {"bf16": 104.9, "int8": 155.6, "int4": 196.8}


def bench_config(device_type: str, config: str | None = None, tiny: bool = False) -> tuple[str, dict]:
    "(name, ModelArgs fields) of the model to benchmark: --config if given, else --tiny, else Llama-2-7B on CUDA and the 124.7M GQA model on CPU."
    if config is not None:
        if config not in LLAMA_CONFIGS:
            raise ValueError(f"unknown --config {config!r}; choose from {', '.join(LLAMA_CONFIGS)}")
        return config, dict(LLAMA_CONFIGS[config])
    if tiny: return "tiny", dict(TINY)
    if device_type == "cuda": return GPU_DEFAULT, dict(LLAMA_CONFIGS[GPU_DEFAULT])
    return "cpu-default", dict(CPU_DEFAULT)


def bench_defaults(device_type: str) -> dict:
    "dtype, prompt_len and new_tokens when not given: bfloat16, 128, 128 on CUDA; float32, 32, 16 on CPU."
    if device_type == "cuda": return dict(dtype="bfloat16", prompt_len=128, new_tokens=128)
    return dict(dtype="float32", prompt_len=32, new_tokens=16)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help=f"a name from LLAMA_CONFIGS ({', '.join(LLAMA_CONFIGS)}); default: "
                    f"{GPU_DEFAULT} on CUDA, a 125M-parameter GQA model on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--quant", default=None, choices=QUANTS, help="weight-only quantization of llama_lit's matrices "
                    "(chapter 10; int4 keeps the output matrix int8, as Llama.build does): torch's kernels for the "
                    "device. transformers is not run (its weights would not be the same)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default: 128 on CUDA, 32 on CPU")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 128 on CUDA, 16 on CPU")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row (median reported), after one warm-up")
    ap.add_argument("--compile", action="store_true", help="also torch.compile: llama_lit's decode step (on CUDA "
                    "mode reduce-overhead: replayed as a CUDA graph) and transformers' forward with its static cache "
                    "(slow to compile on a CPU)")
    ap.add_argument("--skip-transformers", action="store_true", help="llama_lit alone (no transformers model built)")
    ap.add_argument("--reference", action="store_true", help="also llama_lit's reference path (chapters 03-05)")
    ap.add_argument("--ablation", action="store_true", help="also: decode speed at batch 1 with each fast-path step added")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (a smoke test of this script, not a benchmark)")
    ap.add_argument("--show-config", action="store_true", help="print the model, sizes and bandwidth bounds this "
                    "command would use on --device, then exit (needs no such device)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kind = torch.device(args.device).type
    if kind == "cuda" and not torch.cuda.is_available() and not args.show_config:
        ap.error("--device cuda asked for, but torch.cuda.is_available() is False")
    try: args.config_name, args.cfg = bench_config(kind, args.config, args.tiny)
    except ValueError as e: ap.error(str(e))
    d = bench_defaults(kind)
    args.dtype = getattr(torch, args.dtype or d["dtype"])
    args.prompt_len = args.prompt_len or d["prompt_len"]
    args.new_tokens = args.new_tokens or d["new_tokens"]
    if args.new_tokens < 2: ap.error("--new-tokens must be at least 2 (decode speed needs two timed tokens)")
    if args.prompt_len < 1: ap.error("--prompt-len must be at least 1")
    if args.runs < 1: ap.error("--runs must be at least 1")
    try: args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError: ap.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if 1 not in args.batches: ap.error("--batches must include 1 (the ratio on the last line is for batch 1)")
    if min(args.batches) < 1: ap.error(f"--batches must be positive, got {args.batches}")
    if args.quant is not None and args.dtype == torch.float32 and kind == "cuda":
        ap.error("--quant on CUDA runs torch's int8/int4 kernels with bfloat16 (or float16) activations; drop --dtype float32")
    args.skip_transformers = args.skip_transformers or args.quant is not None
    return args


# ---- the bandwidth bound ------------------------------------------------------------------------------------------
def spec_bandwidth(gpu_name: str) -> float | None:
    "A GPU's memory bandwidth (bytes/s) by its datasheet, from its name ('NVIDIA H200' -> 4.8e12), or None if unknown."
    for key, bw in SPEC_BANDWIDTH:
        if key.lower() in gpu_name.lower(): return bw
    return None


def read_bytes_per_token(args: ModelArgs, fmt: str = "bf16", head_fmt: str | None = None, mp: int = 1,
                         group_size: int = 32, norm_bytes: int = 2) -> float:
    """Weight bytes ONE rank reads per decode step: every matrix in `fmt` (the output matrix in `head_fmt`), split
    over `mp` tensor-parallel ranks (each rank reads its own shard), plus the RMSNorm weights every rank holds whole.
    The embedding table is not counted (one row of it is read)."""
    if mp < 1: raise ValueError(f"mp must be at least 1, got {mp}")
    shapes = matmul_shapes(args)
    head_fmt = head_fmt or fmt
    mats = sum(o * i * bits_per_weight(fmt, i, group_size) / 8 for o, i in shapes[:-1])
    o, i = shapes[-1]
    mats += o * i * bits_per_weight(head_fmt, i, group_size) / 8
    return mats / mp + (2 * args.n_layers + 1) * args.dim * norm_bytes


def decode_bound(read_bytes_per_rank: float, bandwidth_per_rank: float, batch: int = 1,
                 kv_bytes_per_rank: float = 0.0) -> float:
    """Upper bound on decode tokens/s (all `batch` sequences together) of a memory-bound step: each rank reads its
    own bytes at its own GPU's bandwidth, all ranks at once. So N ranks give N× one GPU's bandwidth in aggregate and
    the bound is per-rank bandwidth / per-rank bytes, not one GPU's bandwidth over the whole model."""
    if read_bytes_per_rank <= 0 or bandwidth_per_rank <= 0:
        raise ValueError("bytes and bandwidth must be positive")
    return batch * bandwidth_per_rank / (read_bytes_per_rank + kv_bytes_per_rank)


def model_read_bytes(model: Transformer) -> int:
    "Bytes of this rank's model that a decode step reads: parameters and buffers except the embedding table and the KV caches (a quantized layer's packed buffers count as stored)."
    seen, total = set(), 0
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if name.startswith("tok_embeddings.") or "cache_" in name: continue
        key = (t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else id(t)
        if key in seen: continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# ---- bfloat16 divergences ----------------------------------------------------------------------------------------
TIE_TOL = {torch.float32: 1e-4, torch.bfloat16: 2 ** -5, torch.float16: 2 ** -8}   # relative to the logits' size


def near_tie(logits: torch.Tensor, a: int, b: int, dtype: torch.dtype) -> tuple[bool, float, float]:
    """Whether tokens a != b, where two greedy runs part, are a near-tie of the top-2 `logits` (vocab,): both are the
    two largest and their gap is within what `dtype`'s rounding can flip (TIE_TOL × max(1, |top logit|)).
    Returns (near-tie, gap, tolerance)."""
    if logits.dim() != 1: raise ValueError(f"logits must be one row (vocab,), got shape {tuple(logits.shape)}")
    if dtype not in TIE_TOL: raise ValueError(f"no tie tolerance for {dtype}; one of {list(TIE_TOL)}")
    lg = logits.detach().float().cpu()
    top2 = set(lg.topk(2).indices.tolist())
    gap = abs(float(lg[a]) - float(lg[b]))
    tol = TIE_TOL[dtype] * max(1.0, float(lg.abs().max()))
    return ({a, b} == top2 and gap <= tol), gap, tol


def shared_prefix(toks: list[list[int]], ref: list[list[int]]) -> list[int]:
    "Per sequence, how many leading generated tokens two runs share."
    out = []
    for x, y in zip(toks, ref):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]: n += 1
        out.append(n)
    return out


def first_difference(toks, ref):
    for i, (x, y) in enumerate(zip(toks, ref)):
        for j, (a, b) in enumerate(zip(x, y)):
            if a != b: return i, j
        if len(x) != len(y): return i, min(len(x), len(y))
    return None


# ---- building the models in their dtype, on their device ----------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    "Tensors created without a dtype get `dtype` (e.g. bfloat16) inside the block."
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try: yield
    finally: torch.set_default_dtype(old)


def build_llama_lit(margs: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int = 0, std: float = 0.02) -> Transformer:
    """A random-weight Transformer built directly in `dtype` on `device` (no float32 copy, no CPU copy of the weights):
    built on the meta device (`meta_init`, chapter 03), then every weight made on `device` (norms ones, matrices
    N(0, std²)) and the caches and RoPE table made there too (`materialize_buffers`, chapter 04)."""
    with default_dtype(dtype), meta_init():
        model = Transformer(margs)
    gen = torch.Generator(device=device).manual_seed(seed) if device.type != "meta" else None
    fresh = {}                                             # id(old Parameter) -> new: a tied output stays tied
    for mod_name, mod in model.named_modules():
        for name, p in list(mod._parameters.items()):
            if p is None: continue
            if id(p) not in fresh:
                if name == "weight" and "norm" in mod_name.rsplit(".", 1)[-1]:   # RMSNorm: ones
                    t = torch.ones(p.shape, dtype=dtype, device=device)
                else:
                    t = torch.empty(p.shape, dtype=dtype, device=device).normal_(0.0, std, generator=gen)
                fresh[id(p)] = torch.nn.Parameter(t, requires_grad=False)
            setattr(mod, name, fresh[id(p)])
    materialize_buffers(model, device, dtype)
    for name, b in model.named_buffers():
        if b.device != device: raise RuntimeError(f"{name} was built on {b.device}, not {device}")
    return model.eval()


def build_hf(cfg: dict, margs: ModelArgs, model: Transformer, device: torch.device, dtype: torch.dtype):
    "transformers' LlamaForCausalLM built directly in `dtype` on `device`, holding llama_lit's weights (copied in, HF's RoPE layout)."
    from transformers import LlamaConfig, LlamaForCausalLM
    params = {**cfg, "context_length": margs.max_seq_len}
    hf_cfg = LlamaConfig(**params_to_hf_config(params))
    hf_cfg.max_position_embeddings = max(hf_cfg.max_position_embeddings, margs.max_seq_len)
    with default_dtype(dtype), torch.device(device):
        hf = LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(convert_meta_state_dict_to_hf(model.state_dict(), params), strict=False)
    if unexpected or [k for k in missing if "rotary_emb" not in k]:
        raise RuntimeError(f"weights did not map onto transformers' model: missing {missing}, unexpected {unexpected}")
    return hf


def build_models(args, device):
    margs = ModelArgs(**args.cfg, max_batch_size=max(args.batches), max_seq_len=args.prompt_len + args.new_tokens)
    model = build_llama_lit(margs, device, args.dtype, args.seed)
    hf = None
    if not args.skip_transformers and torch.distributed.get_world_size() == 1:   # no fairscale TP in transformers
        hf = build_hf(args.cfg, margs, model, device, args.dtype)
    if args.quant is not None:                       # torch's kernels for the device (chapter 10), as Llama.build
        quantize_model(model, args.quant, head="int8" if args.quant == "int4" else None,
                       dtype=args.dtype if args.dtype != torch.float32 else torch.bfloat16)
    return margs, model, hf


# ---- measuring ----------------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device); return torch.cuda.memory_allocated(device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)                           # hand freed memory back, so a rise is real
    with open("/proc/self/clear_refs", "w") as f: f.write("5")        # Linux: peak RSS := current RSS
    return _rss("VmRSS")


def peak_since(device, base):
    if device.type == "cuda": return torch.cuda.max_memory_allocated(device) - base
    return _rss("VmHWM") - base


def _rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class Stamps:
    "Wall-clock time at each generated token (after a device sync): stamps[0] is the time to first token."
    def __init__(self, device): self.device, self.t = device, []
    def start(self): sync(self.device); self.t0 = time.perf_counter()
    def tick(self): sync(self.device); self.t.append(time.perf_counter() - self.t0)


# ---- the contenders: each returns (generated ids (bsz, new_tokens) as a list, Stamps) -----------------------------
class NoStop:
    "A tokenizer stand-in for Llama: no EOS can stop a random model early, and pad -1 is never generated."
    eos_id, pad_id, stop_tokens = -1, -1, []
    n_words = 1 << 30                                   # every id of the model's vocabulary is a token: none masked


def llama_lit_runner(llm: Llama, device):
    def run(prompts, n):
        st = Stamps(device); st.start()
        r = llm._start(prompts, n, 0.0, 1.0, False)
        for _ in llm._steps(r): st.tick()
        out, _ = llm._finish(r, prompts, n, False)
        return out, st                                     # echo=False: the new tokens only
    return run


def hf_runner(hf, device, **gen_kwargs):
    from transformers import LogitsProcessor, LogitsProcessorList

    class Tick(LogitsProcessor):
        def __init__(self, st): self.st = st
        def __call__(self, input_ids, scores): self.st.tick(); return scores

    def run(prompts, n):
        ids = torch.tensor(prompts, device=device)
        st = Stamps(device); st.start()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          logits_processor=LogitsProcessorList([Tick(st)]), pad_token_id=0, eos_token_id=None, **gen_kwargs)
        return out[:, ids.shape[1]:].tolist(), st
    return run


def measure(runs_by_name: dict, prompts, n, device, runs) -> tuple[dict, dict]:
    """Warm each contender up, then `runs` rounds that run every contender once in turn (so a machine that speeds up
    or slows down affects all alike). Returns {name: tokens of its last run}, {name: median figures}.
    runs_by_name: name -> (runner, bytes it holds before a run: llama_lit's preallocated KV cache, added to its peak)."""
    for run, _ in runs_by_name.values(): run(prompts, n)
    rows = {name: [] for name in runs_by_name}
    tokens = {}
    bsz, plen = len(prompts), len(prompts[0])
    for _ in range(runs):
        for name, (run, held) in runs_by_name.items():
            base = reset_peak(device)
            tokens[name], st = run(prompts, n)
            rows[name].append(dict(ttft=st.t[0], prefill=bsz * plen / st.t[0], decode=bsz * (n - 1) / (st.t[-1] - st.t[0]),
                                   peak=peak_since(device, base) + held))
    return tokens, {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}


def bandwidth_bytes_per_s(device, gib=1.0):
    "Device memory bandwidth from a large copy (bytes read + written per second), median of 5."
    n = int(gib * 2**30) // 4
    a, b = torch.empty(n, device=device, dtype=torch.float32), torch.empty(n, device=device, dtype=torch.float32)
    b.copy_(a); sync(device)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); b.copy_(a); sync(device); ts.append(time.perf_counter() - t)
    return 2 * n * 4 / statistics.median(ts)


# ---- main ---------------------------------------------------------------------------------------------------------
def cache_bytes(model) -> int:
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "cache_" in n)


def contenders_for(args, model, hf, device, tp: bool) -> dict:
    "name -> (runner, bytes it holds before a run). Each llama_lit contender gets its own Llama over the same model."
    held = cache_bytes(model)
    out = {}
    if args.reference:
        out["llama_lit reference"] = (llama_lit_runner(Llama(model, NoStop()), device), held)
    out["llama_lit fast"] = (llama_lit_runner(Llama(model, NoStop(), forward=FastForward(model)), device), held)
    if args.compile:
        out["llama_lit fast+compile"] = (llama_lit_runner(Llama(model, NoStop(), forward=FastForward(model, compile=True)), device), held)
    if hf is None: return out                                           # tensor parallel, --quant, --skip-transformers
    out["transformers default"] = (hf_runner(hf, device), 0)
    out["transformers static"] = (hf_runner(hf, device, cache_implementation="static", disable_compile=True), 0)
    if args.compile:
        from transformers import CompileConfig
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        cc = CompileConfig(mode=mode)
        cc._compile_all_devices = True                                  # transformers' switch to compile off CUDA too
        out["transformers static+compile"] = (hf_runner(hf, device, cache_implementation="static", compile_config=cc), 0)
    return out


ABLATION = [("reference path (chapters 03-05)", None),
            ("+ logits of the last position only", dict(sdpa=False, fused_norm=False, plain_linear=False)),
            ("+ F.scaled_dot_product_attention, GQA without copies", dict(fused_norm=False, plain_linear=False)),
            ("+ F.rms_norm (one call; not one kernel on CPU)", dict(plain_linear=False)),
            ("+ plain F.linear on one process = fast path", dict())]


def ablation(args, model, device, prompts, say):
    "What each step of the fast path buys: decode tok/s at batch 1, one step added per row."
    say(f"\n{'what each step buys (batch 1)':<56}{'decode tok/s':>13}{'× reference':>13}")
    runs = {name: (llama_lit_runner(Llama(model, NoStop(), forward=None if kw is None else FastForward(model, **kw)), device), 0)
            for name, kw in ABLATION}
    _, res = measure(runs, prompts, args.new_tokens, device, args.runs)
    base = res[ABLATION[0][0]]["decode"]
    for name, _ in ABLATION:
        say(f"{name:<56}{res[name]['decode']:>13.1f}{res[name]['decode'] / base:>13.2f}")


def judge_logits(model: Transformer, tokens: list[int]) -> torch.Tensor:
    "llama_lit's next-token logits (vocab,) after `tokens` (prompt + shared prefix), one full forward of the reference path."
    with torch.inference_mode():
        return model(torch.tensor([tokens], device=model.freqs_cis.device), 0)[0, -1]


def check_tokens(tokens: dict, ref_name: str, prompts, model, dtype, bsz: int, n: int, say) -> list[str]:
    """Compare every contender's greedy tokens with ref_name's. Where they part, judge the first divergence on
    llama_lit's logits: a near-tie of the top 2 is reported and the run goes on; anything else stops a float32 run
    before any speed is printed, and is reported loudly in bfloat16/float16. Returns the loud lines."""
    loud = []
    for name, toks in tokens.items():
        if first_difference(toks, tokens[ref_name]) is None: continue
        prefix = shared_prefix(toks, tokens[ref_name])
        i = min(range(len(prefix)), key=lambda k: prefix[k])      # the earliest divergence over all sequences
        j = prefix[i]
        a, b = toks[i][j], tokens[ref_name][i][j]
        tie, gap, tol = near_tie(judge_logits(model, prompts[i] + tokens[ref_name][i][:j]), a, b, dtype)
        what = (f"batch {bsz}: {name} and {ref_name} share a greedy prefix of {min(prefix)}..{max(prefix)} of {n} "
                f"new tokens over {len(prefix)} sequence(s); first divergence at sequence {i}, new token {j}: {a} vs {b}, ")
        if tie:
            say(what + f"a near-tie of the top-2 logits (gap {gap:.3g} <= {tol:.3g}); speeds are still comparable")
            continue
        why = what + f"NOT a near-tie of the top-2 logits (gap {gap:.3g} > {tol:.3g} or not the top two): a real disagreement"
        if dtype == torch.float32:
            raise SystemExit(why + f": {toks[i][:j + 1]} vs {tokens[ref_name][i][:j + 1]} - no speed reported")
        say("WARNING " + why); loud.append(why)
    if not loud and all(first_difference(t, tokens[ref_name]) is None for t in tokens.values()):
        say(f"batch {bsz}: all {len(tokens)} contenders generated the same {n} tokens per sequence")
    return loud


def show_config(args, say=print):
    "The model and the bounds a run with these arguments would use, on paper (no device needed)."
    margs = ModelArgs(**args.cfg, max_batch_size=max(args.batches), max_seq_len=args.prompt_len + args.new_tokens)
    fmt = args.quant or {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[args.dtype]
    head = "int8" if args.quant == "int4" else None
    per_token = read_bytes_per_token(margs, fmt, head, norm_bytes=args.dtype.itemsize)
    say(f"config {args.config_name} on {args.device}: {count_params(margs) / 1e6:.1f}M parameters (dim {margs.dim}, "
        f"{margs.n_layers} layers, {margs.n_heads}/{margs.n_kv_heads or margs.n_heads} heads, vocab {margs.vocab_size}), "
        f"{str(args.dtype).removeprefix('torch.')}, weights {fmt}" + (f" (output matrix {head})" if head else "")
        + f", prompt {args.prompt_len}, {args.new_tokens} new tokens, batches {','.join(map(str, args.batches))}, "
        f"compile {'on (CUDA graphs on CUDA)' if args.compile else 'off'}, transformers {'off' if args.skip_transformers else 'on'}")
    kv = kv_cache_bytes(margs, args.prompt_len + args.new_tokens // 2, 1, args.dtype.itemsize)
    say(f"weights read per decode step: {per_token / 1e9:.2f} GB (+ {kv / 1e9:.3f} GB of KV cache per sequence at the "
        f"mean position); bound at batch 1: " + ", ".join(
            f"{k} {decode_bound(per_token, bw, 1, kv):.1f} tok/s" for k, bw in (("H200 4.8 TB/s", 4.8e12),
                                                                                ("H100 3.35 TB/s", 3.35e12))))
    if args.quant or args.dtype == torch.bfloat16:
        say(f"gpt-fast's figure for this format (its README, Llama-2-7B, batch 1, on an A100 80GB, not measured here): "
            f"{GPT_FAST_A100.get(args.quant or 'bf16')} tok/s")


def main(argv=None):
    args = parse_args(argv)
    if args.show_config: return show_config(args)
    torch.set_grad_enabled(False)
    init_model_parallel()
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None: device = torch.device("cuda", torch.cuda.current_device())
    world = torch.distributed.get_world_size()
    tp = world > 1
    rank0 = torch.distributed.get_rank() == 0
    say = (lambda *a, **k: print(*a, **k, flush=True)) if rank0 else (lambda *a, **k: None)
    t0 = time.perf_counter()
    margs, model, hf = build_models(args, device)
    n_params = count_params(margs)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    say(f"device {device} ({where}), {str(args.dtype).removeprefix('torch.')}"
        + (f", weights {args.quant}" + (" (output int8)" if args.quant == "int4" else "") if args.quant else "")
        + f", torch {torch.__version__}, {args.config_name}: {n_params / 1e6:.1f}M parameters (dim {margs.dim}, "
        f"{margs.n_layers} layers, {margs.n_heads}/{margs.n_kv_heads or margs.n_heads} heads, vocab {margs.vocab_size}), "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, median of {args.runs}"
        + (f", {world} processes (tensor parallel)" if tp else ""))
    read = model_read_bytes(model)
    say(f"built in {time.perf_counter() - t0:.1f} s; llama_lit weights read per decode step: {read / 2**20:.1f} MiB"
        + (" per rank" if tp else "") + (f"; GPU memory allocated {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB"
                                          if device.type == "cuda" else ""))
    contenders = contenders_for(args, model, hf, device, tp)
    ref_name = "llama_lit fast" if hf is None else "transformers default"

    bws = None
    if device.type == "cuda":
        bws = bandwidths(device)
        measured, spec, gpu = bws
        say(f"bandwidth per GPU: {measured / 1e9:.0f} GB/s measured (device copy)"
            + (f", {spec / 1e12:.2f} TB/s by the datasheet ({gpu})" if spec else f" (no datasheet figure for {gpu})")
            + (f"; {world} GPUs: {world}× that in aggregate, each reading its {read / 1e9:.2f} GB shard per step"
               if tp else f"; {read / 1e9:.2f} GB of weights read per step"))
    head = f"{'':<28}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'TTFT ms':>9}{'peak MiB':>10}{'decode ×' + ('fast' if hf is None else 'HF'):>13}"
    g = torch.Generator().manual_seed(args.seed + 1)
    results, prompts_1, loud, printed = {}, None, [], False
    for bsz in args.batches:
        prompts = torch.randint(3, margs.vocab_size, (bsz, args.prompt_len), generator=g).tolist()
        if bsz == 1: prompts_1 = prompts
        tokens, res = measure(contenders, prompts, args.new_tokens, device, args.runs)
        results.update({(name, bsz): r for name, r in res.items()})
        loud += check_tokens(tokens, ref_name, prompts, model, args.dtype, bsz, args.new_tokens, say)
        if not printed: say(); say(head); say("-" * len(head)); printed = True
        base = results[ref_name, bsz]["decode"]
        for name in contenders:                            # each batch's rows as soon as they are measured
            r = results[name, bsz]
            say(f"{name:<28}{bsz:>6}{r['prefill']:>15.1f}{r['decode']:>14.1f}{r['ttft'] * 1e3:>9.1f}"
                f"{r['peak'] / 2**20:>10.1f}{r['decode'] / base:>13.2f}")
        if bws:                                            # at once too: a run cut short keeps what it measured
            for name in contenders:
                if name.startswith("llama_lit"):
                    say("  " + bound_line(args, margs, name, bsz, results[name, bsz]["decode"], read, world, bws))
    if args.ablation: ablation(args, model, device, prompts_1, say)
    fast = "llama_lit fast"
    if args.compile and results["llama_lit fast+compile", 1]["decode"] > results[fast, 1]["decode"]:
        fast = "llama_lit fast+compile"
    if args.compile and device.type == "cuda":            # the static caches of chapter 07 are what lets them replay
        from torch._dynamo.utils import counters
        skips = counters["inductor"]["cudagraph_skips"]
        say(f"CUDA graphs: inductor's cudagraph_skips = {skips}" + ("" if skips else " (the decode step replays as a graph)"))
        if skips: loud.append(f"CUDA graphs were skipped {skips} time(s); TORCH_LOGS=perf_hints says why")
    for line in loud: say("WARNING " + line)
    if tp:
        say(f"\ndecode tok/s of {fast} at batch 1 on {world} processes: "
            f"{results[fast, 1]['decode']:.1f} (compare the same command on 1 process)")
        return
    if hf is None:
        say(f"\ndecode tok/s of {fast} at batch 1: {results[fast, 1]['decode']:.1f} (transformers not run)")
        return
    best = max((n for n in contenders if n.startswith("transformers")), key=lambda n: results[n, 1]["decode"])
    say(f"\nbest transformers setting at batch 1: {best}; {fast} / it: "
        f"{results[fast, 1]['decode'] / results[best, 1]['decode']:.2f}")
    say(f"decode ratio vs transformers: {results[fast, 1]['decode'] / results['transformers default', 1]['decode']:.2f}")


def bandwidths(device) -> tuple[float, float | None, str]:
    "(measured copy bandwidth, datasheet bandwidth or None, GPU name) of this rank's GPU."
    name = torch.cuda.get_device_name(device)
    return bandwidth_bytes_per_s(device), spec_bandwidth(name), name


def bound_line(args, margs, name: str, bsz: int, decode: float, read: float, world: int, bws) -> str:
    """One row's place against the memory-bandwidth bound. Each rank reads its own shard (`read` bytes, what this
    rank's model holds) at its own GPU's bandwidth: bound = per-rank bandwidth / per-rank bytes (N GPUs: N× the
    aggregate bandwidth), with the KV cache at the mean position, split over the ranks like the heads."""
    measured, spec, gpu = bws
    kv = kv_cache_bytes(margs, args.prompt_len + args.new_tokens // 2, bsz, args.dtype.itemsize) / world
    parts = [f"{name} batch {bsz}: {decode:.1f} tok/s"]
    for label, bw in (("datasheet", spec), ("measured-copy", measured)):
        if bw:
            b = decode_bound(read, bw, bsz, kv)
            parts.append(f"{decode / b:.0%} of the {label} bound {b:.1f} tok/s")
    fmt = args.quant or "bf16"
    if bsz == 1 and args.config_name in ("llama2-7b", "llama1-7b") and fmt in GPT_FAST_A100 and world == 1:
        parts.append(f"gpt-fast {fmt}: {GPT_FAST_A100[fmt]} tok/s (its README, on an A100 80GB, not measured here)")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
