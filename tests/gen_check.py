"""Generation under torchrun: Llama.build on this process's shard, greedy generation with log-probs for a ragged
batch, and the logits of one full forward. Rank 0 saves everything to argv[2]. Usage: gen_check.py CKPT_DIR OUT."""
import sys

import torch
import torch.distributed as dist

import llama_lit.build  # noqa: F401  (Llama.build)
from llama_lit.generation import Llama


def main(ckpt_dir: str, out: str) -> None:
    llm = Llama.build(ckpt_dir, max_seq_len=64, max_batch_size=2)
    prompts = [llm.tokenizer.encode(s, bos=True, eos=False) for s in ("Now is the winter", "O Romeo, Romeo, wherefore")]
    tokens, logprobs = llm.generate(prompts, max_gen_len=10, temperature=0.0, logprobs=True)
    with torch.inference_mode():
        logits = llm.model(torch.tensor([prompts[1]]), 0, use_cache=False)
    if dist.get_rank() == 0:
        torch.save({"tokens": tokens, "logprobs": logprobs, "logits": logits, "world": dist.get_world_size()}, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
