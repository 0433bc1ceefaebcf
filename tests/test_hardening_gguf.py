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

from test_gguf import TINY, gguf_names, random_blocks, random_state_dict
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
    w.add_tokenizer_model("llama")
    if tokens:
        w.add_token_list([f"t{i}" for i in range(p["vocab_size"])])
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
    data[at : at + 20] = struct.pack("<I", 0)                     # n_dims 0, its two ne dropped ...
    t0 = data.index(struct.pack("<Q", 2) + b"t0")                 # ... and 16 bytes more in a token: same layout
    data[t0 : t0 + 10] = struct.pack("<Q", 18) + b"t0" + b"_" * 16
    path.write_bytes(data)
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


# ---------------------------------------------------------------- 3: hyper-parameters out of range name the GGUF key

@pytest.mark.parametrize("key,value,vtype", [
    ("llama.rope.freq_base", -10000.0, V.FLOAT32), ("llama.rope.freq_base", float("nan"), V.FLOAT32),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), V.FLOAT32),
    ("llama.attention.layer_norm_rms_epsilon", True, V.BOOL), ("llama.block_count", "2", V.STRING)])
def test_bad_hyperparameters_name_the_key(tmp_path, key, value, vtype):
    path = tiny_gguf(tmp_path / "m.gguf", keys={key: (value, vtype)})
    with pytest.raises(ValueError, match=f"m.gguf: {key} must be"): read_gguf_params(path)


# ---------------------------------------------------------------- 3: NaN/inf block scales and norms refused at load

def one_matrix_gguf(path, qtype: QT, x: np.ndarray):
    w = GGUFWriter(path, "llama")
    if qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K):                        # gguf's quantize lacks these: random blocks
        w.add_tensor("blk.0.attn_q.weight", random_blocks(qtype, x.shape[0] * x.shape[1] // 256).reshape(
                     x.shape[0], -1), raw_dtype=qtype)
    else: w.add_tensor("blk.0.attn_q.weight", x if qtype in (QT.F32, QT.F16) else quantize(x, qtype),
                       raw_dtype=None if qtype in (QT.F32, QT.F16) else qtype)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


@pytest.mark.parametrize("qtype,byte,value", [
    (QT.Q4_1, 0, np.nan), (QT.Q4_1, 2, np.inf), (QT.Q8_0, 0, np.inf), (QT.Q4_0, 0, np.nan), (QT.Q5_0, 0, np.nan),
    (QT.Q5_1, 2, -np.inf), (QT.Q4_K, 0, np.nan), (QT.Q4_K, 2, np.inf), (QT.Q5_K, 2, np.nan), (QT.Q6_K, 208, np.nan),
    (QT.F32, 0, np.nan), (QT.F16, 0, np.inf)])
def test_nan_scales_refused(tmp_path, qtype, byte, value):
    from llama_lit.gguf import BlockEmbedding
    from llama_lit.kquants import kquant_qlinear
    from llama_lit.quant import gguf_qlinear
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    if qtype == QT.F16: x = x.astype(np.float16)
    path = one_matrix_gguf(tmp_path / "m.gguf", qtype, x)
    t = open_gguf(path).tensors[0]
    at = t.data_offset + t.n_bytes // 8 * 3 + byte                  # row 3's first block
    data = bytearray(path.read_bytes())
    f = np.float32 if qtype == QT.F32 else np.float16
    data[at : at + np.dtype(f).itemsize] = np.array(value, f).tobytes()
    path.write_bytes(data)
    t = open_gguf(path).tensors[0]
    calls = [kquant_qlinear]                                         # the CPU kernels' modules (the default)
    if qtype in (QT.Q4_1, QT.Q4_0, QT.Q8_0, QT.Q4_K, QT.F32, QT.F16):    # torch's, for the types it keeps packed
        calls.append(lambda t: gguf_qlinear(t, other="int8"))          # (dequantize_tensor: a codec, NaNs kept)
    if qtype not in (QT.F32, QT.F16): calls.append(BlockEmbedding.from_gguf)
    for call in calls:                      # gguf_qlinear (chapter 10) hands over bytes only: the type, not the name
        with pytest.raises(ValueError, match="blk.0.attn_q.weight|a Q.* tensor: its block scale"): call(t)


# ---------------------------------------------------------------- 6 and 9: kernels given buffers they cannot read

def _kernel_cases():
    from llama_lit import kernels as k
    N, K = 4, 64
    qs4, qs8 = torch.zeros(N, K // 2, dtype=torch.uint8), torch.zeros(N, K, dtype=torch.int8)
    d, qh, w = torch.ones(N, K // 32, dtype=torch.float16), torch.zeros(N, K // 32, dtype=torch.int32), torch.ones(N, K)
    x = torch.ones(1, K)
    meta, exp = (lambda t: t.to("meta")), (lambda t: t[:1].expand_as(t))
    return [("q4_1 meta qs", lambda: k.q4_1_linear(x, meta(qs4), d, d)),
            ("q4_1 meta d", lambda: k.q4_1_linear(x, qs4, meta(d), d)),
            ("float meta w", lambda: k.float_linear(x, meta(w))),
            ("q8_0 meta", lambda: k.q8_0_linear(x, meta(qs8), d)),
            ("q5_0 meta qh", lambda: k.q5_0_linear(x, qs4, meta(qh), d)),
            ("q5_1 meta m", lambda: k.q5_1_linear(x, qs4, qh, d, meta(d))),
            ("q4_1 1-D qs", lambda: k.q4_1_linear(x, qs4.reshape(-1), d, d)),
            ("q8_0 1-D qs", lambda: k.q8_0_linear(x, qs8.reshape(-1), d)),
            ("q5_0 1-D qs", lambda: k.q5_0_linear(x, qs4.reshape(-1), qh, d)),
            ("q4_1 expanded qs", lambda: k.q4_1_linear(x, exp(qs4), d, d)),
            ("q8_0 strided qs", lambda: k.q8_0_linear(torch.ones(1, 32), qs8[:, ::2], d[:, :1])),
            ("q5_1 expanded d", lambda: k.q5_1_linear(x, qs4, qh, exp(d), d)),
            ("q4_1 K=0", lambda: k.q4_1_linear(torch.ones(1, 0), qs4[:, :0], d[:, :0], d[:, :0])),
            ("q8_0 K=0", lambda: k.q8_0_linear(torch.ones(1, 0), qs8[:, :0], d[:, :0])),
            ("float K=0", lambda: k.float_linear(torch.ones(1, 0), w[:, :0]))]


@pytest.mark.parametrize("case", range(15))
def test_kernels_refuse_unusable_buffers(case):
    from llama_lit.kernels import kernels_available
    if not kernels_available(): pytest.skip("no CPU kernels here")
    name, call = _kernel_cases()[case]
    with pytest.raises(ValueError): call()


def test_kquant_kernels_refuse_unusable_buffers():
    from llama_lit.kquants import q4_k_linear
    from llama_lit.kernels import kernels_available
    if not kernels_available(): pytest.skip("no CPU kernels here")
    blocks = torch.zeros(4, 144, dtype=torch.uint8)
    for x, b in ((torch.ones(1, 256), blocks.to("meta")), (torch.ones(1, 256), blocks.reshape(-1)),
                 (torch.ones(1, 0), blocks[:, :0])):
        with pytest.raises(ValueError): q4_k_linear(x, b)


# ---------------------------------------------------------------- 1(b): a stale torch build lock never hangs a load

def test_stale_build_lock_does_not_hang(tmp_path):
    "A build killed by SIGKILL leaves torch's `lock` file: the next load removes it (under our flock) and goes on."
    from llama_lit.kernels import kernel_build_dir
    build = kernel_build_dir()
    build.mkdir(parents=True, exist_ok=True)
    (build / "lock").write_text("")
    code = "from llama_lit.kernels import load_kernels; load_kernels(); print('loaded')"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]
    assert not (build / "lock").exists()


def test_build_lock_times_out(tmp_path):
    "Another live process holding our lock for longer than the bound: one RuntimeError, never a hang."
    import fcntl
    from llama_lit.kernels import _build_lock
    with (tmp_path / "llama_lit.build.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        code = ("from pathlib import Path; from llama_lit.kernels import _build_lock; "
                f"_build_lock(Path('{tmp_path}'), 1)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "RuntimeError: another process has been building" in r.stderr
    with _build_lock(tmp_path, 1): pass                                # free again: taken at once


# ---------------------------------------------------------------- 10: the Q4_0 overflow message speaks to a CLI user

def test_q4_0_overflow_message_names_the_cli_flag():
    from llama_lit.kernels import q4_1_fields
    d = torch.full((1, 1), 60000.0, dtype=torch.float16)               # × 8 > float16's 65504
    with pytest.raises(ValueError, match="--kernels off"):
        q4_1_fields({"qs": torch.zeros(1, 16, dtype=torch.uint8), "d": d})
