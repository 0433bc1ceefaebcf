"""A full disk: not a stranger's file but the user's own machine running out of room in the middle of a write: no
space left on the device (ENOSPC), a quota (EDQUOT), a file-size limit (EFBIG, `ulimit -f`). Every writer in
`llama_lit.checkpoint` (torch.save in `save_checkpoint`, so `reshard`, `convert --from hf/gguf`, `train`; safetensors in
`convert --to hf`) must give one `llama_lit: error:` line naming the file and saying why, with how much the output
needs and how much is free: never torch's `[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598` nor
safetensors' Rust error. Nothing is left behind: no output directory, no temporary directory. Issue 21, items 9 and 10;
each test here failed before the fix. The writers' failures are simulated with exactly what torch and safetensors
raise on a full disk, and reproduced for real: a file-size limit (`setrlimit`, everywhere) and a 1 MiB tmpfs (where
unprivileged user namespaces let a test mount one)."""
import errno
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llama_lit.checkpoint as ck
from conftest import write_random_checkpoint
from test_hardening import inproc, one_line_error

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"         # torch 2.13 on a tmpfs
TORCH_FULL_OLD = ("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed")                                                          # older torch
ST_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"       # safetensors 0.8
ST_FULL_OLD = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
               'message: "No space left on device" })')                                         # older: Rust's Debug
ST_FULL_PRETTY = ('Error while serializing: IoError(\n    Os {\n        code: 28,\n        kind: StorageFull,\n'
                  '        message: "No space left on device",\n    },\n)')                   # the same, pretty


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("disk") / "m")


def output_bytes(ckpt) -> int:
    return sum(v.nbytes for v in ck.load_shard(ckpt).values())


def left_behind(parent: Path, name: str) -> list[str]:
    "What a failed write of `parent / name` left: the output itself or its `.NAME.tmp-*` directory."
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.tmp-"))


def clear_line(r, path, *needles):
    one_line_error(r, f"cannot write {path}: ", *needles)
    assert "enforce fail" not in r.stderr and "Error while serializing" not in r.stderr, r.stderr


# what the writers raise, read by one function -------------------------------------------------------------------
@pytest.mark.parametrize("raised, code", [
    (RuntimeError(TORCH_FULL), errno.ENOSPC), (RuntimeError(TORCH_FULL_OLD), errno.ENOSPC),
    ("safetensors", errno.ENOSPC), ("safetensors-old", errno.ENOSPC), ("safetensors-pretty", errno.ENOSPC),
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (OSError(errno.EFBIG, "File too large"), errno.EFBIG)])
def test_write_error_reads_every_full_disk(raised, code, tmp_path):
    from safetensors import SafetensorError
    if raised == "safetensors": raised = SafetensorError(ST_FULL)
    if raised == "safetensors-old": raised = SafetensorError(ST_FULL_OLD)
    if raised == "safetensors-pretty": raised = SafetensorError(ST_FULL_PRETTY)
    path = tmp_path / "out" / "consolidated.00.pth"
    e = ck.write_error(raised, path, needed=2**62)                   # torch keeps no errno: more than any disk holds
    assert isinstance(e, OSError) and e.errno == code, (raised, e)
    msg = str(e)
    assert msg.startswith(f"cannot write {path}: ") and "\n" not in msg and "needs about 4294967296.0 GiB" in msg, msg
    assert {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "quota", errno.EFBIG: "ulimit -f"}[code] in msg


@pytest.mark.parametrize("raised", [ValueError("bad"), RuntimeError("shape mismatch"), PermissionError(13, "denied"),
                                    FileNotFoundError(2, "No such file"), "safetensors-other"])
def test_write_error_leaves_other_errors_alone(raised, tmp_path):
    from safetensors import SafetensorError
    if raised == "safetensors-other": raised = SafetensorError("Error while serializing: non contiguous tensor")
    assert ck.write_error(raised, tmp_path / "out", needed=2**62) is None


# simulated: exactly what the writers raise ----------------------------------------------------------------------
def torch_save_on_a_full_disk(monkeypatch, free: int, after: int = 0):
    "torch.save writes the first shard(s), then fails as torch does on a full disk; `free` bytes are left."
    calls, real_save, real_usage = [], torch.save, shutil.disk_usage

    def save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) <= after: return real_save(obj, f, *a, **kw)
        buf = io.BytesIO(); real_save(obj, buf)
        data = buf.getvalue()[:1000]                                # half-written, then the disk is full
        if hasattr(f, "write"): f.write(data)
        else: Path(f).write_bytes(data)
        raise RuntimeError(TORCH_FULL)

    monkeypatch.setattr(ck.torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=free))


def test_reshard_torch_full_disk(ckpt, tmp_path, monkeypatch):
    torch_save_on_a_full_disk(monkeypatch, free=2**20, after=1)     # shard 00 fits, shard 01 does not
    r = inproc("reshard", ckpt, tmp_path / "out", "--mp", "2")
    clear_line(r, tmp_path / "out" / "consolidated.01.pth", "no space left on the device", "1.0 MiB is free")
    assert left_behind(tmp_path, "out") == []


def test_save_checkpoint_torch_full_disk(ckpt, tmp_path, monkeypatch):
    torch_save_on_a_full_disk(monkeypatch, free=2**20)
    with pytest.raises(OSError) as e:
        ck.save_checkpoint(tmp_path / "out", ck.read_params(ckpt), ck.load_shard(ckpt))
    assert e.value.errno == errno.ENOSPC, e.value
    assert str(e.value).startswith(f"cannot write {tmp_path / 'out' / 'consolidated.00.pth'}: no space left"), e.value
    assert f"needs about {output_bytes(ckpt) / 2**20:.1f} MiB" in str(e.value), e.value
    assert left_behind(tmp_path, "out") == []


def test_torch_failure_with_room_left_is_still_one_clear_line(ckpt, tmp_path, monkeypatch):
    torch_save_on_a_full_disk(monkeypatch, free=2**40)              # room enough: torch's message gives no reason
    r = inproc("reshard", ckpt, tmp_path / "out", "--mp", "1")
    clear_line(r, tmp_path / "out" / "consolidated.00.pth", "stopped part-way")
    assert left_behind(tmp_path, "out") == []


class SmallDisk:
    "Files on a disk with `room` bytes: a write past it writes what fits and fails with ENOSPC, as write(2) does."
    def __init__(self, room: int): self.room, self.real_open = room, open

    def open(self, path, mode="r", *a, **kw):
        f = self.real_open(path, mode, *a, **kw)
        if "w" not in mode: return f
        disk, write = self, f.write

        def limited(b):
            n = memoryview(b).nbytes
            if n > disk.room:
                write(bytes(memoryview(b).cast("B")[: disk.room])); f.flush(); disk.room = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            disk.room -= n
            return write(b)
        f.write = limited
        return f


def test_save_checkpoint_real_torch_on_a_small_disk(ckpt, tmp_path, monkeypatch):
    "torch's own writer over a file whose writes fail with ENOSPC after 1.5 MiB: the errno is kept, the shard named."
    monkeypatch.setattr(ck, "open", SmallDisk(3 * 2**19).open, raising=False)   # the `open` save_pth uses
    with pytest.raises(OSError) as e:
        ck.save_checkpoint(tmp_path / "out", ck.read_params(ckpt), ck.load_shard(ckpt), mp=2)
    assert e.value.errno == errno.ENOSPC, e.value
    assert str(e.value).startswith(f"cannot write {tmp_path / 'out' / 'consolidated.01.pth'}: no space left"), e.value
    assert left_behind(tmp_path, "out") == []


@pytest.mark.parametrize("message", [ST_FULL, ST_FULL_OLD, ST_FULL_PRETTY], ids=["st-0.8", "st-old", "st-pretty"])
def test_convert_to_hf_full_disk(ckpt, tmp_path, monkeypatch, message):
    import safetensors.torch
    from safetensors import SafetensorError
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):                # half the file, then the disk is full
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes(); Path(filename).write_bytes(data[: len(data) // 2])
        raise SafetensorError(message)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    r = inproc("convert", "--to", "hf", ckpt, tmp_path / "hf", "--context-length", "64")
    clear_line(r, tmp_path / "hf" / "model.safetensors", "no space left on the device", "the output needs about")
    assert left_behind(tmp_path, "hf") == []


# real: a file-size limit and a small tmpfs ------------------------------------------------------------------------
WRITES = {"reshard": (lambda ckpt, out: ["reshard", ckpt, out, "--mp", "2"], "consolidated.00.pth"),
          "convert-to-hf": (lambda ckpt, out: ["convert", "--to", "hf", ckpt, out], "model.safetensors")}


def under_file_size_limit(limit: int):
    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)               # EFBIG from write(2), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


@pytest.mark.parametrize("command", WRITES)
def test_real_file_size_limit(ckpt, tmp_path, command):
    "Real torch and real safetensors, each file allowed 600 kB (`ulimit -f`): shards of 1.2 MB do not fit."
    argv, written = WRITES[command]
    r = subprocess.run([sys.executable, "-m", "llama_lit", *map(str, argv(ckpt, tmp_path / "out"))],
                       capture_output=True, text=True, timeout=180, preexec_fn=under_file_size_limit(600_000),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    clear_line(r, tmp_path / "out" / written, "file-size limit (`ulimit -f`)", "the output needs about")
    assert left_behind(tmp_path, "out") == []


def can_mount_a_tmpfs() -> bool:
    "Whether an unprivileged user namespace may mount a tmpfs here (not in most containers, nor on Ubuntu 24.04 CI)."
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        try: r = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                                capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError): return False
    return r.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or not can_mount_a_tmpfs(),
                    reason="mounting a tmpfs needs unprivileged user namespaces (`unshare -rm`)")
@pytest.mark.parametrize("command", WRITES)
def test_real_full_tmpfs(ckpt, tmp_path, command):
    "A 1 MiB tmpfs as the output's file system: a real ENOSPC from torch and safetensors; the tmpfs is left empty."
    argv, written = WRITES[command]
    disk = tmp_path / "disk"; disk.mkdir()
    script = ('mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; d=$1; shift; '
              '"$@"; rc=$?; echo "left: $(ls -A "$d")" >&2; exit $rc')
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", disk, sys.executable, "-m", "llama_lit",
                        *map(str, argv(ckpt, disk / "out"))], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 99, r.stderr
    r.stderr, left = r.stderr.rsplit("left: ", 1)
    assert left.strip() == "", left                                  # no output, no temporary directory on the tmpfs
    clear_line(r, disk / "out" / written, "no space left on the device", "the output needs about")
