"""Run a program as if this CPU machine had CUDA GPUs: the GPU path of llama_lit, checked without a GPU.

    python tests/fake_cuda.py -m llama_lit generate "ROMEO:" ...        # one process
    python -m torch.distributed.run --nproc_per_node 2 tests/fake_cuda.py script.py ...   # two ranks

`torch.cuda` says a GPU is there (is_available, device_count, set_device, current_device, is_bf16_supported,
mem_get_info, ...), and every tensor is a FakeTensor (`torch._subclasses.FakeTensorMode`): shapes, dtypes and
devices are computed, no number is. FakeTensorMode raises on any mix of CPU and CUDA tensors (or of cuda:0 and
cuda:1) in one op, as a GPU would. A tiny C++ extension (tests/fake_cuda/guard.cpp, built once with
torch.utils.cpp_extension.load and cached) registers c10's FakeGuardImpl for CUDA, so that ops which open a device
guard (indexing, in-place writes) accept "cuda" tensors. gloo stands in for NCCL; the backend asked for is logged.
Tensor collectives are logged (op, device, dtype) and do nothing (fake tensors hold no data); object collectives
and barriers run for real on gloo. A value read back to Python (`.item()`, `.tolist()`, `bool(t)`) is 0, except a
bool, which is True (checks pass), and the result of `.all()` / `.any()`, which is False (no stop token is ever
seen: generation runs to max_gen_len).

Environment: FAKE_CUDA_LOG, a folder where each rank writes rank<R>.json at exit (what it saw: backend, set_device
calls, collectives, the devices each aten op got, every parameter/buffer/cache of the models Llama.build returned);
FAKE_CUDA_DEVICES, how many GPUs each process sees (default: LOCAL_WORLD_SIZE, or 1); FAKE_CUDA_BF16, "native"
(default), "emulated" (is_bf16_supported() True only counting emulation, as on a V100/T4) or "none";
FAKE_CUDA_FREE_GIB, the free GPU memory mem_get_info reports (default 80); FAKE_CUDA_BUILD, where the guard is
built (default ~/.cache/llama_lit/fake_cuda_guard_<torch version>).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import runpy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

HERE = Path(__file__).parent
LOG: dict = {"backend": None, "set_device": [], "collectives": [], "ops": {}, "models": [], "load_kernels": 0,
             "errors": []}


def build_guard() -> None:
    "Compile (once, cached per torch version) and load the fake CUDA device guard."
    from torch.utils.cpp_extension import load
    build = Path(os.environ.get("FAKE_CUDA_BUILD", Path.home() / ".cache" / "llama_lit" /
                                f"fake_cuda_guard_{torch.__version__.replace('+', '_')}"))
    build.mkdir(parents=True, exist_ok=True)
    load("llama_lit_fake_cuda_guard", sources=[str(HERE / "fake_cuda" / "guard.cpp")], build_directory=str(build),
         is_python_module=False, verbose=False)
    _GUARD.append(ctypes.CDLL(str(build / "llama_lit_fake_cuda_guard.so")))     # the same library: its set_device


_GUARD: list = []


def _n_devices() -> int:
    return int(os.environ.get("FAKE_CUDA_DEVICES", os.environ.get("LOCAL_WORLD_SIZE", "1")))


def fake_torch_cuda() -> None:
    "Patch torch.cuda so that the program believes FAKE_CUDA_DEVICES GPUs are there."
    c, cur = torch.cuda, [0]
    def index(d) -> int:
        if isinstance(d, int): return d
        d = torch.device(d)
        return cur[0] if d.index is None else d.index
    def set_device(d):
        i = index(d)
        if not 0 <= i < _n_devices(): raise RuntimeError(f"CUDA error: invalid device ordinal ({i} of {_n_devices()})")
        cur[0] = i; LOG["set_device"].append(i)
        _GUARD[0].llama_lit_fake_cuda_set_device(i)
    def is_bf16_supported(including_emulation: bool = True):
        bf16 = os.environ.get("FAKE_CUDA_BF16", "native")
        return bf16 == "native" or (bf16 == "emulated" and including_emulation)
    def mem_get_info(device=None):
        free = int(float(os.environ.get("FAKE_CUDA_FREE_GIB", "80")) * 2**30)
        return free, max(free, 80 * 2**30)
    patches = dict(is_available=lambda: True, device_count=_n_devices, set_device=set_device,
                   current_device=lambda: cur[0], is_bf16_supported=is_bf16_supported, mem_get_info=mem_get_info,
                   get_device_name=lambda d=None: "Fake GPU", get_device_capability=lambda d=None: (9, 0),
                   synchronize=lambda d=None: None, manual_seed=lambda s: None, manual_seed_all=lambda s: None,
                   seed=lambda: None, seed_all=lambda: None, _lazy_init=lambda: None, is_initialized=lambda: True,
                   init=lambda: None, empty_cache=lambda: None)
    for k, v in patches.items(): setattr(c, k, v)
    for name in ("tensor", "as_tensor", "asarray"):               # these resolve a bare "cuda" to cuda:0 when faked
        real = getattr(torch, name)
        def ctor(*a, _real=real, device=None, **kw):
            if device is not None and torch.device(device).type == "cuda" and torch.device(device).index is None:
                device = torch.device("cuda", cur[0])
            return _real(*a, device=device, **kw)
        setattr(torch, name, ctor)


def fake_swap_tensors() -> None:
    "Module.to() swaps a FakeTensor parameter for its moved copy, which FakeTensorMode's weak references forbid: move the data and the fake device instead."
    real = torch.utils.swap_tensors
    def swap_tensors(t1, t2):
        try: return real(t1, t2)
        except RuntimeError as e:
            if "weakref" not in str(e) or not hasattr(t2, "fake_device"): raise
        with torch.no_grad(): t1.data = t2
        t1.fake_device = t2.fake_device
    torch.utils.swap_tensors = swap_tensors


def _tensors(x):
    if isinstance(x, torch.Tensor): yield x
    elif isinstance(x, (list, tuple)):
        for y in x: yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values(): yield from _tensors(y)


class _Work:
    "What an async collective returns."
    def wait(self, *a, **kw): return True
    def is_completed(self): return True


def fake_collectives() -> None:
    "gloo for NCCL; tensor collectives logged and skipped, the rest (object collectives, barriers, groups) real on gloo."
    from torch._subclasses.fake_tensor import FakeTensor
    init = dist.init_process_group
    def init_process_group(backend=None, *a, **kw):
        LOG["backend"] = backend
        with _disable_current_modes(): return init("gloo", *a, **kw)
    dist.init_process_group = init_process_group
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
                 "broadcast", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "send", "recv"):
        real = getattr(dist, name)
        def wrapped(*a, _name=name, _real=real, **kw):
            ts = list(_tensors(a)) + list(_tensors(kw))
            for t in ts: LOG["collectives"].append([_name, str(t.device), str(t.dtype).removeprefix("torch.")])
            if any(isinstance(t, FakeTensor) for t in ts): return _Work() if kw.get("async_op") else None
            with _disable_current_modes(): return _real(*a, **kw)
        setattr(dist, name, wrapped)
    for name in ("broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list", "barrier",
                 "monitored_barrier", "new_group", "destroy_process_group"):
        real = getattr(dist, name)
        def wrapped(*a, _real=real, **kw):
            with _disable_current_modes(): return _real(*a, **kw)
        setattr(dist, name, wrapped)


class Scalars(TorchDispatchMode):
    "Values read back to Python from fake tensors (see the module docstring); records the devices each aten op gets."
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func in (aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default):
            t = args[0]
            v = getattr(t, "_fake_item", None)
            if v is None: v = True if t.dtype == torch.bool else (0.0 if t.is_floating_point() else 0)
            return bool(v) if func is aten.is_nonzero.default else v
        if func.namespace in ("_c10d_functional", "c10d") and "wait" not in str(func):   # functional collectives
            for t in _tensors(args[:1]):
                LOG["collectives"].append([str(func), str(t.device), str(t.dtype).removeprefix("torch.")])
        devs = LOG["ops"].setdefault(str(func), [])
        for t in _tensors((args, kwargs)):
            if str(t.device) not in devs: devs.append(str(t.device))
        out = func(*args, **kwargs)
        if func in (aten.all.default, aten.any.default, aten.all.dim, aten.any.dim): out._fake_item = False
        return out


def _where(t) -> str: return f"{t.device} {str(t.dtype).removeprefix('torch.')}"


def describe(llm) -> dict:
    "Where every tensor of a built Llama lives: parameters, buffers, the FastForward caches, freqs_cis, the quantized layers."
    m = llm.model
    d = {"params": {n: _where(p) for n, p in m.named_parameters()},
         "buffers": {n: _where(b) for n, b in m.named_buffers()},
         "freqs_cis": _where(m.freqs_cis), "caches": [], "static_caches": [], "qlinear": {}}
    fwd = llm.forward
    for k, (kc, vc) in enumerate(getattr(fwd, "caches", [])):
        for name, c in (("k", kc), ("v", vc)):
            d["caches"].append(f"{k}.{name} {_where(c)}")
            base = c._base if c._base is not None else c
            d["static_caches"].append(getattr(c, "_dynamo_static_input_type", None)
                                      or getattr(base, "_dynamo_static_input_type", None))
    if hasattr(fwd, "cos"): d["rope_tables"] = [_where(fwd.cos), _where(fwd.sin)]
    from llama_lit.quant import PackedWeights                     # QuantLinear, KernelLinear: the swapped-in matrices
    for n, q in m.named_modules():
        if isinstance(q, PackedWeights):
            d["qlinear"][n] = {"type": type(q).__name__, "kind": getattr(q, "kind", None),
                               "buffers": {b: _where(t) for b, t in q.named_buffers()}}
    return d


def hook_build() -> None:
    "Record what Llama.build returns, and any call of chapter 11's CPU kernel build."
    import llama_lit.build                                          # Llama.build is patched onto Llama there
    from llama_lit import generation, kernels
    build = generation.Llama.build
    def logged_build(*a, **kw):
        llm = build(*a, **kw)
        try: LOG["models"].append(describe(llm))
        except Exception as e: LOG["errors"].append(f"describe: {type(e).__name__}: {e}")
        return llm
    generation.Llama.build = staticmethod(logged_build)
    import fairscale.nn.model_parallel.initialize as fs_init       # its set-up computes rank lists with torch: real
    init_mp = fs_init.initialize_model_parallel
    def initialize_model_parallel(*a, **kw):
        with _disable_current_modes(): return init_mp(*a, **kw)
    fs_init.initialize_model_parallel = initialize_model_parallel
    load = kernels.load_kernels
    def logged_load():
        LOG["load_kernels"] += 1
        return load()
    kernels.load_kernels = logged_load


def write_log() -> None:
    out = os.environ.get("FAKE_CUDA_LOG")
    if not out: return
    with _disable_current_modes():
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(LOG, indent=1))


def fake_mode():
    "A FakeTensorMode that never touches a real device, although torch.cuda.is_available() now says True."
    from torch._subclasses.fake_tensor import FakeTensorMode
    class Mode(FakeTensorMode):
        avoid_device_init = property(lambda self: True)         # torch.tensor(data, device="cuda") stays fake
    return Mode(allow_non_fake_inputs=True)


def main(argv: list[str]) -> None:
    if not argv: raise SystemExit(__doc__)
    build_guard()
    fake_torch_cuda()
    fake_collectives()
    fake_swap_tensors()
    hook_build()
    atexit.register(write_log)
    mode, scalars = fake_mode(), Scalars()
    with mode, scalars:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
