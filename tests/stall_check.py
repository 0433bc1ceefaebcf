"""A rank that stalls (SIGSTOP) after loading: rank 0 goes on into generation and its collectives must fail after
LLAMA_LIT_DIST_TIMEOUT seconds with an error that says where, instead of waiting torch's default 30 minutes."""
import os
import signal
import sys

from llama_lit.attention import dist_context
from llama_lit.generation import Llama

llm = Llama.build(sys.argv[1], max_seq_len=64, max_batch_size=1)
if int(os.environ["RANK"]) == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
try:
    llm.generate([[1, 100, 200]], max_gen_len=20, temperature=0.0)
except RuntimeError as e:
    print(f"rank 0 gave up: {str(e)[:200]}{dist_context()}", flush=True)
    os._exit(3)
print("rank 0 finished generating", flush=True)
