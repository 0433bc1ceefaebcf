"""Tensor-parallel forward, run under `torchrun --nproc_per_node N` (gloo on CPU, NCCL on GPUs).

Every rank builds the same seeded Transformer (fairscale initialises the full matrix, then keeps its shard), runs
one full forward and a prefill + token-by-token decode through the KV cache, and rank 0 saves the args, seed,
tokens, logits, shard shapes and every rank's trace of one forward (the output shape of each module of block 0,
and each collective with the module it ran in) to the path given as argv[1]. The caller rebuilds the model in one process from
the same args and seed and compares. Exit status 0 only if every rank finished."""
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist

from llama_lit.config import ModelArgs
from llama_lit.parallel import init_model_parallel
from llama_lit.model import Transformer

TRACED = ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "attention", "ffn_norm",
          "feed_forward.w1", "feed_forward.w3", "feed_forward.w2", "feed_forward")


def trace_forward(model, tokens) -> dict:
    "One forward: {module: output shape} for block 0's modules, and [(collective, innermost module)] for the model."
    shapes, collectives, stack, hooks = {}, [], [], []
    def enter(name):
        def pre(module, args): stack.append(name)
        return pre
    def leave(name):
        def post(module, args, out):                          # returns None: the output is left as it is
            if name.startswith("layers.0."): shapes[name[len("layers.0."):]] = tuple(out.shape)
            stack.pop()
        return post
    for name, m in model.named_modules():
        if name: hooks += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave(name))]
    originals = {op: getattr(dist, op) for op in ("all_reduce", "all_gather")}
    def counting(op):
        def call(*a, **kw):
            collectives.append((op, stack[-1] if stack else "")); return originals[op](*a, **kw)
        return call
    for op in originals: setattr(dist, op, counting(op))     # fairscale looks them up on torch.distributed per call
    try:
        with torch.inference_mode(): model(tokens, 0, use_cache=False)
    finally:
        for op, f in originals.items(): setattr(dist, op, f)
        for h in hooks: h.remove()
    return {"shapes": {k: shapes[k] for k in TRACED}, "collectives": collectives}


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
    traces = [None] * dist.get_world_size()
    dist.all_gather_object(traces, trace_forward(model, tokens))
    if dist.get_rank() == 0:
        torch.save({"args": asdict(args), "seed": seed, "tokens": tokens, "logits": logits,
                    "cached_logits": torch.cat(steps, 1), "shards": shards, "traces": traces}, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
