#!/usr/bin/env python
"""A Llama-2-7B-shaped Q4_K_M file on a 24 GB machine: build it, generate, and say what memory it took.

Writes (once, cached in bench/.cache/) a GGUF of Llama 2 7B's shapes (dim 4096, 32 layers, 32 heads, FFN 11008,
vocabulary 32000) whose blocks are random but valid, in llama.cpp's Q4_K_M mix: Q4_K everywhere except attn_v and
ffn_down of the layers llama.cpp gives more bits (`use_more_bits`: the first and last eighth, and every third one
between) and the output matrix, which are Q6_K; the norms F32. No download: the weights are noise, so the text is
noise too; what is measured is that it opens at all (dequantized to float32 it would take ≈ 27 GB), the resident
memory it adds over the process before, the build time and the decode speed. The package's shipped tokenizer (4096
tokens) stands in for Llama 2's: the embedding has 32000 rows, and generation never samples the rows the tokenizer
lacks (chapter 05c's `mask_unknown_ids`).

    .venv/bin/python bench/big_gguf.py [--threads 2] [--new-tokens 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SHAPE = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden=11008, vocab=32000)


def use_more_bits(i: int, n: int) -> bool:
    "llama.cpp's rule (llama-quant.cpp) for the layers whose attn_v / ffn_down Q4_K_M stores as Q6_K."
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_plan(s: dict = SHAPE, mix: str = "Q4_K_M") -> list[tuple[str, tuple[int, int] | tuple[int], str]]:
    "(GGUF name, PyTorch shape, ggml type) of every tensor, in file order: llama.cpp's Q4_K_M mix, or one type."
    if mix != "Q4_K_M":
        return [(n, shape, "F32" if len(shape) == 1 else mix) for n, shape, _ in tensor_plan(s)]
    d, h, n = s["dim"], s["hidden"], s["n_layers"]
    out = [("token_embd.weight", (s["vocab"], d), "Q4_K"), ("output_norm.weight", (d,), "F32")]
    if not s.get("tied"): out.append(("output.weight", (s["vocab"], d), "Q6_K"))   # tied: the embedding's blocks
    for i in range(n):
        more = "Q6_K" if use_more_bits(i, n) else "Q4_K"
        kv = d // s["n_heads"] * s["n_kv_heads"]
        out += [(f"blk.{i}.attn_q.weight", (d, d), "Q4_K"), (f"blk.{i}.attn_k.weight", (kv, d), "Q4_K"),
                (f"blk.{i}.attn_v.weight", (kv, d), more), (f"blk.{i}.attn_output.weight", (d, d), "Q4_K"),
                (f"blk.{i}.ffn_gate.weight", (h, d), "Q4_K"), (f"blk.{i}.ffn_up.weight", (h, d), "Q4_K"),
                (f"blk.{i}.ffn_down.weight", (d, h), more), (f"blk.{i}.attn_norm.weight", (d,), "F32"),
                (f"blk.{i}.ffn_norm.weight", (d,), "F32")]
    return out


def random_block_rows(qtype, rows: int, cols: int, rng) -> np.ndarray:
    """rows × cols weights of ggml type `qtype` as random but valid blocks (uint8 (rows, bytes per row)): every
    float16 scale small and positive (weights ~ ±0.05), Q6_K's int8 sub-block scales in −12..12, the rest random."""
    from gguf import GGML_QUANT_SIZES
    from llama_lit.gguf import BLOCK_DTYPES
    block, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (rows * (cols // block), size), dtype=np.uint8)
    rec = b.view(BLOCK_DTYPES[qtype]).reshape(-1)
    for name in ("d", "dmin", "m"):
        if name in rec.dtype.names: rec[name] = 1e-4 if block == 256 else 2e-3
    if qtype.name == "Q6_K": rec["scales"] = rng.integers(-12, 13, rec["scales"].shape)
    return b.reshape(rows, -1)


def float_rows(qtype, shape, rng) -> np.ndarray:
    "F32/F16 weights ~ N(0, 0.02) (norms ~ 1 ± 0.1), or BF16 as their uint16 bit patterns."
    x = (1 + 0.1 * rng.standard_normal(shape)) if len(shape) == 1 else 0.02 * rng.standard_normal(shape)
    x = x.astype(np.float32)
    if qtype.name == "F16": return x.astype(np.float16)
    if qtype.name == "BF16": return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x


def write_file(path: Path, s: dict = SHAPE, seed: int = 0, mix: str = "Q4_K_M") -> Path:
    "The GGUF of `s` in `mix` (tensor_plan), tensor by tensor (never the whole model in memory)."
    from gguf import GGMLQuantizationType as QT, GGUFWriter, GGML_QUANT_SIZES
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, "llama")
    for k, v in {"block_count": s["n_layers"], "embedding_length": s["dim"], "feed_forward_length": s["hidden"],
                 "attention.head_count": s["n_heads"], "attention.head_count_kv": s["n_kv_heads"],
                 "vocab_size": s["vocab"], "context_length": 4096}.items():
        w.add_uint32(f"llama.{k}", v)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 10000.0)
    plan = tensor_plan(s, mix)
    floats = {QT.F32: np.float32, QT.F16: np.float16, QT.BF16: np.uint16}
    for name, shape, t in plan:
        q = QT[t]
        block, size = GGML_QUANT_SIZES[q]
        if q in floats: w.add_tensor_info(name, shape, np.dtype(floats[q]), size * int(np.prod(shape)),
                                          raw_dtype=q if q == QT.BF16 else None)
        else: w.add_tensor_info(name, (shape[0], shape[1] // block * size), np.dtype(np.uint8),
                                shape[0] * shape[1] // block * size, raw_dtype=q)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file()
    for name, shape, t in plan:
        q = QT[t]
        w.write_tensor_data(float_rows(q, shape, rng) if q in floats else random_block_rows(q, *shape, rng))
    w.close()
    return path


def rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--mix", default="Q4_K_M", help="Q4_K_M (llama.cpp's mix) or one ggml type for every matrix")
    a = ap.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"llama2-7b-shaped.{a.mix}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        write_file(path.with_suffix(".part"), mix=a.mix).rename(path)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    import torch
    torch.set_num_threads(a.threads)
    from llama_lit import Llama
    from llama_lit.assets import default_tokenizer_path
    before = rss()
    t0 = time.perf_counter()
    llm = Llama.build(path, tokenizer_path=default_tokenizer_path(), max_seq_len=a.max_seq_len, max_batch_size=1)
    built, after = time.perf_counter() - t0, rss()
    p = llm.model.params
    kv = 2 * p.n_layers * p.max_seq_len * p.n_kv_heads * (p.dim // p.n_heads) * 4       # float32 K and V caches
    size = path.stat().st_size
    ids = llm.tokenizer.encode("Once upon a time", bos=True, eos=False)
    llm.generate([ids], 2, temperature=0.0)                                            # warm-up
    t0 = time.perf_counter()
    out, _ = llm.generate([ids], a.new_tokens, temperature=0.0)
    dt = time.perf_counter() - t0
    print(f"| file | file GiB | build s | RSS added GiB | (file + KV cache) GiB | ratio | decode tok/s |")
    print(f"|---|---|---|---|---|---|---|")
    print(f"| {path.name} | {size / 2**30:.2f} | {built:.1f} | {(after - before) / 2**30:.2f} | "
          f"{(size + kv) / 2**30:.2f} | {(after - before) / (size + kv):.2f} | {len(out[0]) / dt:.2f} |")
    print(f"threads {a.threads}; {len(out[0])} tokens generated (noise: random weights)")
    print(f"memory added by build / (file + KV cache): {(after - before) / (size + kv):.2f}")


if __name__ == "__main__":
    sys.exit(main())
