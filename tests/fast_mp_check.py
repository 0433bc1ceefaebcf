"""FastForward on several tensor-parallel ranks, run under `torchrun --nproc_per_node N` (gloo on CPU).

Every rank builds the same seeded Transformer (see tp_check.py), generates greedily through the reference forward
(fairscale's modules), FastForward eager and FastForward compiled, and saves its tokens and what torch._dynamo
counted during the compiled run (graph breaks, graphs, frames) to argv[1] + ".<rank>". argv[2] names the model:
"split-dim" (ParallelEmbedding, split by dimension) or "vocab-split" (VocabParallelEmbedding, split by token id). With argv[3] == "fairscale"
the compiled forward keeps fairscale's modules (plain_linear=False): the path FastForward took before functional
collectives, kept for the comparison; argv[4] is the number of layers (2 by default). The caller rebuilds the model in one process and compares."""
import sys

import torch
import torch.distributed as dist
from torch._dynamo.utils import counters

from llama_lit.config import ModelArgs
from llama_lit.fast import FastForward
from llama_lit.generation import Llama
from llama_lit.model import Transformer
from llama_lit.parallel import init_model_parallel

MODELS = {"split-dim": dict(), "vocab-split": dict(vocab_parallel_embedding=True)}
PROMPTS = [[5, 17, 33, 40, 8], [61, 11, 70]]                       # ragged: 5 and 3 tokens
NEW_TOKENS = 12


class NoStop:
    eos_id, pad_id, stop_tokens = -1, -1, []


def model_args(name: str, n_layers: int = 2) -> ModelArgs:
    return ModelArgs(dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_batch_size=2,
                     max_seq_len=32, **MODELS[name])


def build(name: str, n_layers: int = 2) -> Transformer:
    init_model_parallel()                                              # torchrun's ranks, or one process
    torch.manual_seed(0)
    return Transformer(model_args(name, n_layers)).eval()


def greedy(model, forward=None) -> list[list[int]]:
    return Llama(model, NoStop(), forward=forward).generate(PROMPTS, NEW_TOKENS, temperature=0)[0]


def main(out_path: str, name: str, path: str = "functional", n_layers: str = "2") -> None:
    init_model_parallel()
    model = build(name, int(n_layers))
    res = {"reference": greedy(model), "eager": greedy(model, FastForward(model, plain_linear=path != "fairscale")),
           "embedding": type(model.tok_embeddings).__name__}
    with torch.inference_mode():
        res["logits"] = FastForward(model, plain_linear=path != "fairscale")(torch.tensor(PROMPTS[:1]), 0)   # (1, 1, vocab)
    torch._dynamo.reset(); counters.clear()
    res["compiled"] = greedy(model, FastForward(model, compile=True, plain_linear=path != "fairscale"))
    res["graph_breaks"] = sum(counters["graph_break"].values())
    res["break_reasons"] = sorted(counters["graph_break"])[:5]
    res["unique_graphs"] = counters["stats"]["unique_graphs"]
    res["frames_ok"] = counters["frames"]["ok"]
    torch.save(res, f"{out_path}.{dist.get_rank()}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
