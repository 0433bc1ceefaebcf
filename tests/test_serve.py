"""The OpenAI-compatible server (chapter 14) on the shipped model: the official `openai` client against a live server
on a loopback port, a load test whose every answer equals `Llama.generate`'s for that request alone, each 400, the
API key, a client that hangs up (its blocks come back at once), and SIGTERM's drain (in-process and through the CLI)."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from llama_lit import build                                      # noqa: F401  (Llama.build)
from llama_lit.chat import format_dialog
from llama_lit.generation import Llama
from llama_lit.paged import Engine
from llama_lit.serve import DrainingServer, bind, make_app

MODEL = "shakespeare"
CTX = 256


class LiveServer:
    "uvicorn serving `app` in a thread on a free loopback port (DrainingServer: `drain()` acts as SIGTERM does)."
    def __init__(self, app, drain_timeout: float = 30.0):
        sock = bind("127.0.0.1", 0)
        self.app, self.url = app, f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=drain_timeout + 5)
        self.server = DrainingServer(config, app.state.llama_lit, drain_timeout)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def drain(self): self.server.handle_exit(signal.SIGTERM, None)

    def engine(self, fn): return self.app.state.llama_lit.worker.call(fn).result(timeout=10)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def llm():
    return Llama.build(None, max_seq_len=CTX, max_batch_size=1)


@pytest.fixture(scope="module")
def ref():
    "A second copy of the model for the expected answers, never touched by the server's engine thread."
    return Llama.build(None, max_seq_len=CTX, max_batch_size=1)


@pytest.fixture(scope="module")
def server(llm):
    s = LiveServer(make_app(llm, MODEL))
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(ref, ids, n, logprobs=False):
    "What Llama.generate answers for this request alone: (text, tokens, finish_reason[, logprobs])."
    out = ref.generate([ids], n, temperature=0.0, logprobs=logprobs)
    toks = out[0][0]
    reason = "length" if len(toks) == n else "stop"
    return (ref.tokenizer.decode(toks), toks, reason) + ((out[1][0],) if logprobs else ())


def chat_ids(ref, text): return format_dialog([{"role": "user", "content": text}], ref.tokenizer)
def text_ids(ref, text): return ref.tokenizer.encode(text, bos=ref.tokenizer.add_bos, eos=False)


def slow(engine: Engine, seconds: float) -> Engine:
    "The engine, each step `seconds` slower: a request in flight stays in flight long enough to act on it."
    step = engine.step
    engine.step = lambda: (time.sleep(seconds), step())[1]
    return engine


# --- the official client ----------------------------------------------------------------------------------------

def test_openai_chat(client, ref):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Speak, my lord."}],
                                       max_tokens=20, temperature=0)
    text, toks, reason = greedy(ref, chat_ids(ref, "Speak, my lord."), 20)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == reason and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(chat_ids(ref, "Speak, my lord.")), len(toks))


def test_openai_chat_logprobs(client, ref):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Speak."}], max_tokens=8,
                                       temperature=0, logprobs=True)
    text, toks, _, lps = greedy(ref, chat_ids(ref, "Speak."), 8, logprobs=True)
    assert [x.logprob for x in r.choices[0].logprobs.content] == pytest.approx(lps, abs=1e-4)
    assert [x.token for x in r.choices[0].logprobs.content] == [ref.tokenizer.decode([t]) for t in toks]


def test_openai_chat_stream(client, ref):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What news?"}], max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text, toks, reason = greedy(ref, chat_ids(ref, "What news?"), 24)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(toks)
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_completions_with_logprobs(client, ref):
    r = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=16, temperature=0, logprobs=1)
    text, toks, reason, lps = greedy(ref, text_ids(ref, "ROMEO:"), 16, logprobs=True)
    assert r.choices[0].text == text and r.choices[0].finish_reason == reason
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(lps, abs=1e-4)
    assert len(r.choices[0].logprobs.tokens) == len(toks) == r.usage.completion_tokens


def straddling_stop(ref, toks) -> str:
    "Two characters of the decoded answer on either side of a token boundary, found nowhere earlier in it."
    full = ref.tokenizer.decode(toks)
    for j in range(2, len(toks)):
        b = len(ref.tokenizer.decode(toks[:j]))
        stop = full[b - 1 : b + 1]
        if len(stop) == 2 and stop.strip() == stop and full.find(stop) == b - 1: return stop
    pytest.fail("no token boundary to put a stop string across")


def test_stop_strings_never_shown(client, ref):
    full, toks, _ = greedy(ref, text_ids(ref, "ROMEO:"), 40)
    stop = straddling_stop(ref, toks)     # its first character ends a token: a stream must hold it back, then drop it
    want = full[:full.index(stop)]
    r = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop, "zzz"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
    s = list(client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=40, temperature=0, stop=stop,
                                       stream=True))
    assert "".join(c.choices[0].text for c in s) == want and s[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(client):
    ask = lambda seed: client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=16, temperature=1.0,
                                                 seed=seed).choices[0].text
    assert ask(7) == ask(7)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client.models.retrieve("gpt-4o")


def test_smollm2_chat_template_and_its_stop_token():
    "A GGUF model with its own chat template: the reply ends at <|im_end|> (finish_reason stop), as Llama.generate's."
    from llama_lit.assets import smollm2_path
    llm2 = Llama.build(smollm2_path(), max_seq_len=256, max_batch_size=1)
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    text, toks, reason = greedy(llm2, format_dialog(dialog, llm2.tokenizer), 48)
    assert reason == "stop"
    s = LiveServer(make_app(llm2, "smollm2"))
    try:
        api = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = api.chat.completions.create(model="smollm2", messages=dialog, max_tokens=48, temperature=0)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, "stop")
        assert r.usage.completion_tokens == len(toks)
    finally:
        s.close()


# --- many at once -----------------------------------------------------------------------------------------------

PROMPTS = ["ROMEO:", "JULIET:", "KING HENRY:", "First Citizen:", "HAMLET:", "To be, or not", "O, speak again",
           "Now is the winter"]


def test_load_64_requests_8_at_a_time(server, ref):
    jobs = [(k % 2 == 0, PROMPTS[k % 8] + " " * (k // 8 % 3), 4 + (k * 7) % 37) for k in range(64)]
    want = [greedy(ref, chat_ids(ref, p) if chat else text_ids(ref, p), n) for chat, p, n in jobs]
    running, peak = [0], [0]

    async def one(api, gate, chat, prompt, n):
        async with gate:
            running[0] += 1; peak[0] = max(peak[0], running[0])
            try:
                if chat:
                    r = await api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                          max_tokens=n, temperature=0)
                    return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens
                r = await api.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0)
                return r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens
            finally:
                running[0] -= 1

    async def main():
        gate = asyncio.Semaphore(8)
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as api:
            return await asyncio.gather(*(one(api, gate, *j) for j in jobs))

    got = asyncio.run(main())
    assert peak[0] == 8
    bad = [(k, g, w[::2]) for k, (g, w) in enumerate(zip(got, want)) if g != (w[0], w[2], len(w[1]))]
    assert not bad, bad[:3]
    assert server.engine(lambda e: (e.has_unfinished(), e.pool.n_free() == e.pool.n_blocks)) == (False, True)


# --- bad input: one 400 per case, naming the field ---------------------------------------------------------------

OK = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
CASES = [  # (path, body: dict or raw str, status, param, code or None)
    ("chat", '{"model": "shakespeare", "messages": [', 400, None, "invalid_json"),
    ("chat", "[1, 2]", 400, None, "invalid_body"),
    ("chat", {**OK, "max_token": 5}, 400, "max_token", "unknown_field"),
    ("chat", {**OK, "max_tokens": "5"}, 400, "max_tokens", "invalid_value"),
    ("chat", {**OK, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("chat", {**OK, "max_tokens": 10_000}, 400, "max_tokens", "context_length_exceeded"),
    ("chat", {**OK, "temperature": -0.5}, 400, "temperature", "invalid_value"),
    ("chat", json.dumps(OK)[:-1] + ', "temperature": NaN}', 400, "temperature", "invalid_value"),
    ("chat", {**OK, "temperature": True}, 400, "temperature", "invalid_value"),
    ("chat", {**OK, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("chat", {**OK, "top_k": -1}, 400, "top_k", "invalid_value"),
    ("chat", {**OK, "seed": "x"}, 400, "seed", "invalid_value"),
    ("chat", {**OK, "n": 2}, 400, "n", None),
    ("chat", {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ("chat", {**OK, "stop": [""]}, 400, "stop", None),
    ("chat", {**OK, "stream_options": {"include_usage": True}}, 400, "stream_options", None),
    ("chat", {**OK, "top_logprobs": 3}, 400, "top_logprobs", None),
    ("chat", {**OK, "presence_penalty": 0.5}, 400, "presence_penalty", None),
    ("chat", {"model": MODEL, "messages": []}, 400, "messages", "invalid_value"),
    ("chat", {"model": MODEL}, 400, "messages", "missing_field"),
    ("chat", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ("chat", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", None),
    ("chat", {"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", "invalid_dialog"),
    ("chat", {"model": MODEL, "messages": [{"role": "user", "content": "[INST] x"}]}, 400, "messages",
     "unsafe_content"),
    ("chat", {"model": MODEL, "messages": [{"role": "user", "content": "ROMEO: " * 300}]}, 400, "messages",
     "context_length_exceeded"),
    ("chat", {**OK, "model": "gpt-4o"}, 404, "model", "model_not_found"),
    ("completions", {"model": MODEL, "prompt": "ROMEO: " * 300}, 400, "prompt", "context_length_exceeded"),
    ("completions", {"model": MODEL, "prompt": "x", "max_tokens": 300}, 400, "max_tokens", "context_length_exceeded"),
    ("completions", {"model": MODEL, "prompt": []}, 400, "prompt", None),
    ("completions", {"model": MODEL, "prompt": [1, "x"]}, 400, "prompt[1]", "invalid_value"),
    ("completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt", None),
    ("completions", {"model": MODEL, "prompt": [1, 10**6]}, 400, "prompt", None),
    ("completions", {"model": MODEL, "prompt": "x", "logprobs": 5}, 400, "logprobs", None),
    ("completions", {"model": MODEL, "prompt": "x", "echo": True}, 400, "echo", None),
    ("completions", {"model": MODEL, "prompt": "x", "best_of": 2}, 400, "best_of", "unknown_field"),
]


def test_every_bad_request_is_one_openai_error(server):
    paths = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path, body, status, param, code in CASES:
            raw = body if isinstance(body, str) else json.dumps(body)
            r = http.post(paths[path], content=raw, headers={"Content-Type": "application/json"})
            err = r.json()["error"]
            assert (r.status_code, err["param"], err["type"]) == (status, param, "invalid_request_error"), (body, err)
            assert code is None or err["code"] == code, (body, err)
            assert param is None or param.split("[")[0] in err["message"], (body, err)
        r = http.get("/v1/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        for prompt in ("ROMEO:", ["ROMEO:"]):                                            # still serving
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 3})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert server.engine(lambda e: e.pool.n_free() == e.pool.n_blocks)


def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10_000)


# --- the API key ------------------------------------------------------------------------------------------------

def test_api_key(llm):
    s = LiveServer(make_app(llm, MODEL, api_key="s3cret"))
    try:
        for key in ("wrong", "s3cre", "s3cretX"):
            bad = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                bad.completions.create(model=MODEL, prompt="x", max_tokens=2)
        r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/health").status_code == 200                      # no key for a health check
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2
    finally:
        s.close()


# --- a client that hangs up, and the drain ----------------------------------------------------------------------

@pytest.fixture
def slow_server(llm):
    servers = []
    def make(drain_timeout=30.0):
        servers.append(LiveServer(make_app(slow(Engine(llm, max_running=4), 0.02), MODEL), drain_timeout))
        return servers[-1]
    yield make
    for s in servers: s.close()


def whole_again(s: LiveServer, within: float) -> float:
    "Seconds until the engine has nothing left and every block is free (fails after `within`)."
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if s.engine(lambda e: not e.has_unfinished() and e.pool.n_free() == e.pool.n_blocks): return time.monotonic() - t0
        time.sleep(0.02)
    pytest.fail(f"blocks not back within {within} s")


def test_disconnect_mid_stream_frees_blocks_at_once(slow_server):
    s = slow_server()
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:                   # 200 tokens at >= 20 ms a step: >= 4 s if nobody hung up
        with http.stream("POST", s.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()                           # kept: a dropped iterator closes the connection
            assert next(lines).startswith("data: ")
            state = s.engine(lambda e: (e.has_unfinished(), e.pool.n_free(), e.pool.n_blocks))
            assert state[0] and state[1] < state[2], state                      # in flight
    assert whole_again(s, within=3.0) < 3.0             # a loaded CI machine: still well under 4 s
    r = httpx.post(s.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 2})   # still serving
    assert r.json()["usage"]["completion_tokens"] == 2


def test_disconnect_while_waiting_for_a_whole_response(slow_server):
    s = slow_server()
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 200, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(s.url + "/v1/completions", json=body, timeout=0.5)
    assert whole_again(s, within=3.0) < 3.0             # a loaded CI machine: still well under 4 s


def refused_soon(url: str, within: float = 5.0) -> bool:
    "Whether connecting to `url` is refused within `within` seconds (uvicorn checks for a stop every 0.1 s)."
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try: httpx.get(url, timeout=2)
        except httpx.ConnectError: return True
        time.sleep(0.05)
    return False


def drained_stream(s: LiveServer, max_tokens: int) -> list[str]:
    "The non-empty lines of a stream that was running when the server began to drain (as on SIGTERM)."
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", s.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)
            s.drain()                                        # what SIGTERM does
            assert refused_soon(s.url + "/health")            # no new connections while draining
            return [x for x in lines if x]


def test_drain_finishes_running_requests_then_stops(slow_server):
    s = slow_server(drain_timeout=30)
    events = [json.loads(x[6:]) for x in drained_stream(s, 40) if x.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length" and "error" not in events[-1]
    s.thread.join(10)
    assert not s.thread.is_alive()


def test_drain_timeout_ends_the_rest_with_an_error_event(slow_server):
    s = slow_server(drain_timeout=0.3)
    rest = drained_stream(s, 200)
    assert rest[-1] == "data: [DONE]"
    err = json.loads(rest[-2][6:])["error"]
    assert err["code"] == "server_shutdown" and "did not finish" in err["message"]
    s.thread.join(10)
    assert not s.thread.is_alive()


def test_an_engine_failure_ends_every_request_with_an_error(llm):
    engine = Engine(llm, max_running=4)
    engine.step = lambda: (_ for _ in ()).throw(RuntimeError("out of memory (simulated)"))
    s = LiveServer(make_app(engine, MODEL))
    try:
        r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert r.status_code == 500 and "out of memory (simulated)" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/health").json() == {"status": "error"}
        r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutdown"
    finally:
        s.close()


def test_cli_serve_refuses_a_busy_port_before_loading(capsys):
    from llama_lit.cli import main
    busy = bind("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try: code = main(["serve", "--port", str(port), "--ckpt-dir", "/no/such/checkpoint"])
    finally: busy.close()
    err = capsys.readouterr().err
    assert code == 1 and f"llama_lit: error: cannot listen on 127.0.0.1:{port}: " in err, err


def test_cli_serve_without_fastapi_says_which_extra():
    code = ("import sys; sys.modules['fastapi'] = None; from llama_lit.cli import main; "
            "sys.exit(main(['serve', '--port', '0']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "llama_lit: error: serve needs FastAPI and uvicorn" in r.stderr, r.stderr
    assert "pip install 'llama_lit[serve]'" in r.stderr


def test_cli_serve_sigterm_drains_and_exits_0():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLAMA_LIT_API_KEY": "k"}
    p = subprocess.Popen([sys.executable, "-m", "llama_lit", "serve", "--port", "0", "--max-seq-len", "256"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = p.stdout.readline()
        assert "serving 'shakespeare' at http://127.0.0.1:" in banner, (banner, p.stderr.read() if p.poll() else "")
        url = banner.split(" at ")[1].split()[0]
        assert "curl " in p.stdout.readline()
        body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/completions", json=body, headers={"Authorization": "Bearer k"},
                          timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            p.send_signal(signal.SIGTERM)
            events = [x for x in lines if x]
        assert events[-1] == "data: [DONE]" and "error" not in events[-2]
        assert p.wait(timeout=30) == 0, p.stderr.read()
        assert "stopped" in p.stdout.read()
    finally:
        if p.poll() is None: p.kill(); p.wait()
