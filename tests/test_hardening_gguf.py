"""Hostile GGUF files and hostile kernel inputs (issue 21): files from strangers on model hubs whose header, metadata,
tensor table or block scales lie — absurd counts, overlapping or misaligned tensors, NaN/inf scales, out-of-range
hyper-parameters — and kernel calls given buffers they cannot use (meta/non-CPU, non-contiguous, 1-D, K=0). Each is
refused at once with one ValueError naming the file, key or tensor: no hang, no memory growth, no garbage, no
traceback from deep inside. Every test below failed before its fix."""
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT, GGUFValueType as V, GGUFWriter
from gguf.quants import quantize

from test_gguf import TINY, gguf_names, random_state_dict
from llama_lit.gguf import gguf_to_meta_name, load_gguf, read_gguf_params
from llama_lit.gguf_file import gguf_metadata, open_gguf


def tiny_gguf(path, qtype=QT.Q8_0, keys=None, drop=(), sd=None, p=TINY, tokens=True):
    """A tiny untied LLaMA GGUF: matrices in `qtype`, norms F32; `keys` {key: (value, GGUFValueType)} replace or add
    metadata, `drop` removes keys."""
    sd = sd or random_state_dict(p, tied=False)
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    kv = {"llama.block_count": (p["n_layers"], V.UINT32), "llama.embedding_length": (p["dim"], V.UINT32),
          "llama.feed_forward_length": (hidden, V.UINT32), "llama.attention.head_count": (p["n_heads"], V.UINT32),
          "llama.attention.head_count_kv": (p["n_kv_heads"], V.UINT32),
          "llama.attention.layer_norm_rms_epsilon": (p["norm_eps"], V.FLOAT32),
          "llama.rope.freq_base": (p["rope_theta"], V.FLOAT32), **(keys or {})}
    w = GGUFWriter(path, "llama")
    for k, (v, t) in kv.items():
        if k not in drop: w.add_key_value(k, v, t)
    if tokens:
        w.add_tokenizer_model("llama"); w.add_token_list([f"t{i}" for i in range(p["vocab_size"])])
    for name in gguf_names(p["n_layers"], False):
        x = sd[gguf_to_meta_name(name)].numpy()
        if x.ndim == 1 or qtype == QT.F32: w.add_tensor(name, x.astype(np.float32))
        else: w.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def table_entry(data: bytes, name: str) -> tuple[int, int]:
    "(byte of the n_dims field, byte of the offset field) of tensor `name` in the tensor table of a GGUF file."
    raw = name.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at, at + 4 + 8 * n_dims + 4


# ---------------------------------------------------------------- 1(a): block_count absurd -> refused at once

@pytest.mark.parametrize("n", [4294967295, 10**6])
def test_huge_block_count_refused_fast(tmp_path, n):
    path = tiny_gguf(tmp_path / "m.gguf", keys={"llama.block_count": (n, V.UINT32)})
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"llama.block_count={n}"): read_gguf_params(path)
    assert time.perf_counter() - t0 < 1


# ---------------------------------------------------------------- 3: tensors overlapping or misaligned

def test_overlapping_tensor_refused(tmp_path):
    path = tiny_gguf(tmp_path / "m.gguf", QT.F32)
    data = bytearray(path.read_bytes())
    _, at0 = table_entry(data, "blk.0.attn_q.weight")
    _, at1 = table_entry(data, "blk.1.attn_q.weight")
    data[at1 : at1 + 8] = data[at0 : at0 + 8]                      # layer 1's query points at layer 0's bytes
    path.write_bytes(data)
    with pytest.raises(ValueError, match="overlaps"): open_gguf(path)


def test_misaligned_tensor_refused(tmp_path):
    path = tiny_gguf(tmp_path / "m.gguf", QT.F32)
    data = bytearray(path.read_bytes())
    _, at = table_entry(data, "blk.1.attn_q.weight")
    struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, at)[0] + 4)
    path.write_bytes(data)
    with pytest.raises(ValueError, match="blk.1.attn_q.weight starts at data offset .* not a multiple"):
        open_gguf(path)


# ---------------------------------------------------------------- 9: table and metadata counts bounded

def test_n_dims_zero_on_token_embd(tmp_path):
    path = tiny_gguf(tmp_path / "m.gguf", QT.F32)
    data = bytearray(path.read_bytes())
    at, _ = table_entry(data, "token_embd.weight")
    path.write_bytes(data[:at] + struct.pack("<I", 0) + data[at + 4 + 16 :])   # n_dims 0, its two ne dropped
    with pytest.raises(ValueError, match="token_embd.weight"): read_gguf_params(path)


def test_too_many_dims_refused(tmp_path):
    path = tiny_gguf(tmp_path / "m.gguf", QT.F32)
    data = bytearray(path.read_bytes())
    at, _ = table_entry(data, "token_embd.weight")
    struct.pack_into("<I", data, at, 2**31)
    path.write_bytes(data)
    with pytest.raises(ValueError, match="token_embd.weight has 2147483648 dimensions"): open_gguf(path)


@pytest.mark.parametrize("key", ["llama.attention.head_count", "llama.feed_forward_length"])
def test_zero_sizes_name_the_key(tmp_path, key):
    path = tiny_gguf(tmp_path / "m.gguf", keys={key: (0, V.UINT32)})
    with pytest.raises(ValueError, match=f"{key}"): read_gguf_params(path)


def test_no_tokens_one_line(tmp_path):
    from llama_lit.tokenizer import Tokenizer
    path = tiny_gguf(tmp_path / "m.gguf", tokens=False)
    with pytest.raises(ValueError, match="tokenizer.ggml"): Tokenizer(path)


def test_array_of_empty_arrays_refused_fast(tmp_path):
    "A 48 MB file of 4M empty arrays (an array of arrays): refused at once, not parsed for a minute."
    n = 4 * 10**6
    key = b"tokenizer.ggml.scores"
    head = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", V.ARRAY, V.ARRAY, n))
    (tmp_path / "m.gguf").write_bytes(head + struct.pack("<IQ", V.UINT8, 0) * n)
    t0 = time.perf_counter()
    for read in (open_gguf, gguf_metadata):
        with pytest.raises(ValueError, match="m.gguf.*tokenizer.ggml.scores.*arrays"): read(tmp_path / "m.gguf")
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize("what", ["n_kv", "n_tensors", "strings"])
def test_absurd_counts_refused_fast(tmp_path, what):
    key = b"tokenizer.ggml.tokens"
    n_tensors, n_kv = (2**40, 1) if what == "n_tensors" else (0, 2**62 if what == "n_kv" else 1)
    data = (b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", V.ARRAY, V.STRING, 2**60 if what == "strings" else 0) + bytes(64))
    (tmp_path / "m.gguf").write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="m.gguf.*claims"): open_gguf(tmp_path / "m.gguf")
    assert time.perf_counter() - t0 < 1


def test_bad_tokenizer_gguf_one_line(tmp_path):
    "`--tokenizer` at a bad GGUF: every corruption of the metadata is one ValueError naming the file."
    from llama_lit.tokenizer import Tokenizer
    good = tiny_gguf(tmp_path / "good.gguf").read_bytes()
    rng = np.random.default_rng(0)
    for i in range(40):
        data = bytearray(good)
        at = int(rng.integers(4, 600))
        data[at : at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        (tmp_path / "bad.gguf").write_bytes(data)
        try: Tokenizer(tmp_path / "bad.gguf")
        except ValueError as e: assert "bad.gguf" in str(e), (at, e)


# ---------------------------------------------------------------- 10: GGUF version 0 is not "big-endian"

def test_version_zero_message(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 0, 0, 0))
    with pytest.raises(ValueError, match="GGUF version 0;"): open_gguf(tmp_path / "m.gguf")
    (tmp_path / "b.gguf").write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    with pytest.raises(ValueError, match="big-endian"): open_gguf(tmp_path / "b.gguf")
