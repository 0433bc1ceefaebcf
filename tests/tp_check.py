"""Tensor-parallel forward, run under `torchrun --nproc_per_node N` (gloo on CPU, NCCL on GPUs).

Every rank builds the same seeded Transformer (fairscale initialises the full matrix, then keeps its shard), runs
one full forward and a prefill + token-by-token decode through the KV cache, and rank 0 saves the args, seed,
tokens, logits and shard shapes to the path given as argv[1]. The caller rebuilds the model in one process from
the same args and seed and compares. Exit status 0 only if every rank finished."""
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist

from llama_lit.attention import ModelArgs, init_model_parallel
from llama_lit.model import Transformer


def main(out_path: str) -> None:
    mp = init_model_parallel()
    seed = 0
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32,
                     max_batch_size=2, max_seq_len=32, rope_theta=50000.0)
    torch.manual_seed(seed)
    model = Transformer(args)
    tokens = torch.randint(0, args.vocab_size, (2, 12))
    with torch.inference_mode():
        logits = model(tokens, 0)
        steps = [model(tokens[:, :5], 0)] + [model(tokens[:, t:t + 1], t) for t in range(5, 12)]
    a = model.layers[0].attention
    shards = {"model_parallel_size": mp, "wq_local_rows": a.wq.weight.shape[0], "wq_full_rows": args.dim,
              "w2_local_cols": model.layers[0].feed_forward.w2.weight.shape[1],
              "tok_embeddings_local_dim": model.tok_embeddings.weight.shape[1]}
    if dist.get_rank() == 0:
        torch.save({"args": asdict(args), "seed": seed, "tokens": tokens, "logits": logits,
                    "cached_logits": torch.cat(steps, 1), "shards": shards}, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
