"""A rank that dies mid-run: rank 1 exits abruptly after loading, rank 0 goes on into generation (and its
collectives). The launcher must notice and end the whole run with a non-zero status, not hang."""
import os
import sys

from llama_lit.generation import Llama

llm = Llama.build(sys.argv[1], max_seq_len=64, max_batch_size=1)
if int(os.environ["RANK"]) == 1:
    os._exit(7)
llm.generate([[1, 100, 200]], max_gen_len=20, temperature=0.0)
print("rank 0 finished generating", flush=True)
