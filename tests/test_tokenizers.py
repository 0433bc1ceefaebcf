"""llama_lit.tokenizer.Tokenizer against the reference libraries, for each format it reads.

Llama 3 tiktoken file: Meta's own `llama_models` Tokenizer and transformers' tiktoken conversion.
HF tokenizer.json: transformers (AutoTokenizer) on the same folder.
GGUF `gpt2` (SmolLM2): transformers' GGUF tokenizer builder on the same file; GGUF `gpt2` with `llama-bpe`: Meta's
ids; GGUF `llama`: SentencePieceProcessor on the model the GGUF was written from.
"""
import json
import random
from pathlib import Path

import pytest

from llama_lit.assets import default_tokenizer_path, llama3_tokenizer_path, smollm2_path
from llama_lit.gguf_file import gguf_metadata
from llama_lit.tokenizer import (LLAMA3_SPECIAL_TOKENS, Tokenizer, bytes_to_pieces, find_tokenizer, gguf_tokenizer_json,
                                 sentencepiece_proto, tokenizer_format)

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "君不见黄河之水天上来，奔流到海不复回。人人生而自由，在尊严和权利上一律平等。",
    "emoji: 😀👍🏽 🇫🇷 ❤️ family 👨‍👩‍👧 🤖🤖🤖",
    "def forward(self, x):\n\tif x is None:\n        return {'a': [1, 22, 333, 4444]}  # 1234567890\n",
    "   leading and trailing   \n\n\n\t\t  ",
    " " * 300 + "x" + "\n" * 50 + "\t" * 20 + "  \r\n  y",
    "mixed: naïve café — Ünïcödé, Привет мир, こんにちは世界, 안녕하세요, مرحبا",
    "special text <|begin_of_text|> <|eot_id|> <|im_start|>user <s> </s> <unk> inside",
    "I'm you're they'll we've he'd IT'S Don'T",
    "x" * 3000 + " " * 3000 + "y",
    "",
]
LONG = [" " * 30_000 + "x" * 30_000 + "\n" * 26_000, "ab " * 150_000]  # Meta cuts these before tiktoken sees them

SMOLLM2 = smollm2_path()


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def l3():
    return Tokenizer(llama3_tokenizer_path())


@pytest.fixture(scope="module")
def meta_l3():
    "Meta's own Llama 3 tokenizer class from llama-models 0.3.0 (it imports with tiktoken alone)."
    mod = pytest.importorskip("llama_models.llama3.tokenizer")
    return mod.Tokenizer(llama3_tokenizer_path())


@pytest.fixture(scope="module")
def l3_converted():
    "transformers' own conversion of Meta's tiktoken file to a `tokenizers` BPE (vocabulary + merges)."
    from transformers.convert_slow_tokenizer import TikTokenConverter
    return TikTokenConverter(str(llama3_tokenizer_path()), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, l3_converted):
    "An HF-style Llama 3.1 folder: tokenizer.json (post-processor adds BOS), tokenizer_config.json, generation_config.json."
    from tokenizers import processors
    d = tmp_path_factory.mktemp("llama3_hf")
    l3_converted.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", 128000)])
    l3_converted.save(str(d / "tokenizer.json"))
    template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                "{{ m['content'] }}<|eot_id|>{% endfor %}")
    (d / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=template,
        model_max_length=131072, clean_up_tokenization_spaces=True)))
    (d / "generation_config.json").write_text(json.dumps(dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009])))
    return d


@pytest.fixture(scope="module")
def smol():
    return Tokenizer(SMOLLM2)


@pytest.fixture(scope="module")
def smol_reference():
    "transformers' tokenizer built from the same GGUF (its own reader and GGUF-to-tokenizers builder)."
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer
    arch, tokenizer_dict, config = get_gguf_tokenizer(str(SMOLLM2))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    return backend, config


def _gguf(path: Path, **kv):
    "Write a GGUF with only tokenizer metadata (no tensors) with gguf.GGUFWriter."
    import gguf
    w = gguf.GGUFWriter(str(path), arch="llama")
    for name, v in kv.items(): getattr(w, name)(v)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


# ---------------------------------------------------------------- Llama 3 tiktoken

def test_llama3_ids_equal_meta(l3, meta_l3):
    for s in TEXTS + LONG:
        for bos, eos in [(True, False), (False, True)]:
            assert l3.encode(s, bos=bos, eos=eos) == meta_l3.encode(s, bos=bos, eos=eos), s[:40]
        assert l3.encode(s, bos=False, eos=False, allow_special=True) == \
            meta_l3.encode(s, bos=False, eos=False, allowed_special="all"), s[:40]
        assert l3.decode(meta_l3.encode(s, bos=True, eos=False)) == meta_l3.decode(meta_l3.encode(s, bos=True, eos=False))


def test_llama3_ids_equal_transformers(l3, l3_converted):
    from transformers import PreTrainedTokenizerFast
    as_text = PreTrainedTokenizerFast(tokenizer_object=l3_converted, split_special_tokens=True)
    as_special = PreTrainedTokenizerFast(tokenizer_object=l3_converted)
    for s in TEXTS:
        assert l3.encode(s, bos=False, eos=False) == as_text.encode(s, add_special_tokens=False), s[:40]
        assert l3.encode(s, bos=False, eos=False, allow_special=True) == as_special.encode(s, add_special_tokens=False), s[:40]
        ids = l3.encode(s, bos=True, eos=True)
        assert l3.decode(ids) == as_special.decode(ids, skip_special_tokens=False)
        assert l3.pieces(ids) == as_special.convert_ids_to_tokens(ids)


def test_llama3_specials(l3, meta_l3):
    assert (l3.kind, l3.n_words, l3.bos_id, l3.eos_id, l3.pad_id) == ("tiktoken", 128256, 128000, 128001, -1)
    assert l3.special_tokens == meta_l3.special_tokens          # Meta's names, order and ids
    assert list(l3.special_tokens)[:12] == ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                            "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                                            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                                            "<|python_tag|>", "<|image|>"]
    assert l3.special_tokens["<|reserved_special_token_245|>"] == 128255
    assert l3.stop_tokens == meta_l3.stop_tokens == [128001, 128008, 128009]
    assert (l3.add_bos, l3.bos_token, l3.eos_token, l3.chat_template) == (True, "<|begin_of_text|>", "<|end_of_text|>", None)
    for s in TEXTS + LONG:
        assert l3.decode(l3.encode(s, bos=False, eos=False)) == s
    header = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    ids = l3.encode(header, bos=True, eos=False, allow_special=True)
    assert ids[:2] == [128000, 128006] and ids[-1] == 128009 and l3.decode(ids) == "<|begin_of_text|>" + header
    assert not set(l3.encode(header, bos=False, eos=False)) & set(l3.special_tokens.values())


# ---------------------------------------------------------------- HF tokenizer.json

def test_hf_tokenizer_json_equals_transformers(hf_dir, meta_l3):
    from transformers import AutoTokenizer
    tok = Tokenizer(hf_dir)
    assert (tok.kind, tok.model_path) == ("hf", hf_dir / "tokenizer.json")
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.add_bos) == (128256, 128000, 128009, True)
    assert tok.stop_tokens == [128009, 128001, 128008]
    assert tok.chat_template == json.loads((hf_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert (tok.bos_token, tok.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    assert tok.special_tokens == meta_l3.special_tokens
    as_text = AutoTokenizer.from_pretrained(hf_dir, split_special_tokens=True)
    as_special = AutoTokenizer.from_pretrained(hf_dir)
    for s in TEXTS:
        assert tok.encode(s, bos=tok.add_bos, eos=False) == as_text(s)["input_ids"], s[:40]
        assert tok.encode(s, bos=tok.add_bos, eos=False, allow_special=True) == as_special(s)["input_ids"], s[:40]
        assert tok.encode(s, bos=True, eos=False) == meta_l3.encode(s, bos=True, eos=False), s[:40]
        ids = tok.encode(s, bos=True, eos=True)
        assert tok.decode(ids) == as_special.decode(ids, skip_special_tokens=False)
    msgs = [{"role": "user", "content": "hi <|eot_id|>"}]
    assert as_special.apply_chat_template(msgs, tokenize=False) == \
        __import__("jinja2").Template(tok.chat_template).render(messages=msgs, bos_token=tok.bos_token)


@pytest.fixture(scope="module")
def toy_json(tmp_path_factory):
    "A small byte-level BPE tokenizer.json trained here, with Llama 3's pre-tokenizer, three of its specials and a BOS post-processor."
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers
    from llama_lit.corpus import load_corpus
    from llama_lit.tokenizer import LLAMA3_PAT_STR
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PAT_STR), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([load_corpus()["macbeth"]] + TEXTS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    path = tmp_path_factory.mktemp("toy") / "tokenizer.json"
    tk.save(str(path))
    return path


@pytest.mark.parametrize("post_processor, add_bos_token, expected", [(True, False, True), (False, True, False), (False, False, False)])
def test_hf_add_bos_as_transformers(tmp_path, toy_json, post_processor, add_bos_token, expected):
    "As in transformers 5: with a tokenizer.json, its post-processor decides and the config's add_bos_token is ignored."
    from transformers import AutoTokenizer
    tj = json.loads(toy_json.read_text())
    if not post_processor: tj["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                                                   add_bos_token=add_bos_token)))
    tok = Tokenizer(tmp_path / "tokenizer.json")
    ref, ref_text = AutoTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path, split_special_tokens=True)
    assert tok.add_bos is expected
    for s in TEXTS:
        assert tok.encode(s, bos=tok.add_bos, eos=False, allow_special=True) == ref(s)["input_ids"], s[:40]
        assert tok.encode(s, bos=tok.add_bos, eos=False) == ref_text(s)["input_ids"], s[:40]
    assert tok.stop_tokens == [1, 2]      # EOS, then the end-like special tokens (no generation_config.json)


def test_hf_without_config(toy_json, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(toy_json.read_bytes())
    tok = Tokenizer(tmp_path)
    assert (tok.kind, tok.n_words, tok.bos_id, tok.eos_id, tok.add_bos, tok.chat_template) == ("hf", 600, 0, 1, True, None)
    assert (tok.stop_tokens, tok.bos_token, tok.eos_token) == ([1, 2], "<|begin_of_text|>", "<|end_of_text|>")


# ---------------------------------------------------------------- GGUF

def test_gguf_smollm2_equals_transformers(smol, smol_reference):
    backend, config = smol_reference
    assert (smol.kind, smol.n_words, smol.add_bos, smol.pad_id) == ("gguf", 49152, config["add_bos_token"], -1)
    assert (smol.bos_token, smol.eos_token) == (config["bos_token"], config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert smol.chat_template == config["chat_template"]
    assert (smol.bos_id, smol.eos_id, smol.stop_tokens) == (1, 2, [2, 0])   # <|im_end|>, <|endoftext|>
    assert smol.special_tokens == {t: i for i, t in enumerate(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>",
         "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
         "<jupyter_output>", "<jupyter_script>", "<empty_output>"])}
    for s in TEXTS:
        backend.encode_special_tokens = True
        assert smol.encode(s, bos=False, eos=False) == backend.encode(s, add_special_tokens=False).ids, s[:40]
        backend.encode_special_tokens = False
        ref = backend.encode(s, add_special_tokens=False).ids
        assert smol.encode(s, bos=False, eos=False, allow_special=True) == ref, s[:40]
        assert smol.decode(ref) == backend.decode(ref, skip_special_tokens=False) and smol.decode(ref) == s
    assert smol.encode("<|im_start|>user\nhi<|im_end|>\n", False, False, allow_special=True)[:2] == [1, 4093]
    assert smol.encode("In 1599", False, False) == [788, 216, 33, 37, 41, 41]            # digits one by one


def test_gguf_tokenizer_json_export(smol, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    meta = gguf_metadata(SMOLLM2, prefix="tokenizer.")
    (tmp_path / "tokenizer.json").write_text(json.dumps(gguf_tokenizer_json(meta)))
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for s in TEXTS:
        assert hf.encode(s, add_special_tokens=False).ids == smol.encode(s, bos=False, eos=False, allow_special=True)


def test_gguf_llama_bpe_equals_meta(tmp_path, l3_converted, meta_l3):
    "Llama 3's vocabulary written as a GGUF `gpt2`/`llama-bpe` tokenizer gives Meta's ids."
    model = json.loads(l3_converted.to_str())["model"]
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(128000))
    tokens = [t for t, _ in by_id] + LLAMA3_SPECIAL_TOKENS
    path = _gguf(tmp_path / "llama3.gguf", add_tokenizer_model="gpt2", add_tokenizer_pre="llama-bpe", add_token_list=tokens,
                 add_token_types=[1] * 128000 + [3] * 256, add_token_merges=[" ".join(m) for m in model["merges"]],
                 add_bos_token_id=128000, add_eos_token_id=128009, add_eot_token_id=128009)
    tok = Tokenizer(path)
    assert (tok.kind, tok.n_words, tok.add_bos, tok.bos_id, tok.eos_id) == ("gguf", 128256, True, 128000, 128009)
    assert set(tok.stop_tokens) == {128001, 128008, 128009}
    for s in TEXTS:
        assert tok.encode(s, bos=True, eos=False) == meta_l3.encode(s, bos=True, eos=False), s[:40]
        assert tok.encode(s, bos=False, eos=False, allow_special=True) == meta_l3.encode(s, bos=False, eos=False, allowed_special="all")
    assert tok.pieces(tok.encode("Hello world", False, False)) == ["Hello", bytes_to_pieces(b" world")] == ["Hello", "Ġworld"]


@pytest.fixture(scope="module")
def sp_gguf(tmp_path_factory):
    "The shipped SentencePiece model written as a GGUF `llama` tokenizer (pieces, scores, types)."
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(default_tokenizer_path()))
    n = sp.vocab_size()
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 1 for i in range(n)]
    path = _gguf(tmp_path_factory.mktemp("spgguf") / "sp.gguf", add_tokenizer_model="llama",
                 add_token_list=[sp.id_to_piece(i) for i in range(n)], add_token_scores=[sp.get_score(i) for i in range(n)],
                 add_token_types=types, add_bos_token_id=1, add_eos_token_id=2, add_unk_token_id=0,
                 add_add_bos_token=True, add_chat_template="{{ messages }}")
    return sp, path


def test_gguf_sentencepiece_equals_sentencepiece(sp_gguf):
    sp, path = sp_gguf
    tok = Tokenizer(path)
    assert (tok.kind, tok.n_words, tok.bos_id, tok.eos_id, tok.add_bos, tok.chat_template) == ("gguf", 4096, 1, 2, True, "{{ messages }}")
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2} and tok.stop_tokens == [2]
    for s in TEXTS + ["<s> hi </s>"]:
        assert tok.encode(s, bos=True, eos=True) == [1] + sp.encode(s) + [2], s[:40]
        assert tok.decode(sp.encode(s)) == sp.decode(sp.encode(s))
    assert tok.encode("<s>hi", bos=False, eos=False, allow_special=True) == [1] + sp.encode("hi")


def test_gguf_metadata_equals_gguf_reader(sp_gguf):
    from gguf import GGUFReader
    _, path = sp_gguf
    r = GGUFReader(str(path))
    ours = gguf_metadata(path)
    assert set(ours) == {k for k in r.fields if not k.startswith("GGUF.")}   # GGUFReader adds header pseudo-keys
    for k, v in ours.items():
        ref = r.fields[k].contents()
        assert (v == pytest.approx(ref) if k == "tokenizer.ggml.scores" else v == ref), k


def test_gguf_metadata_is_the_one_reader(sp_gguf, tmp_path):
    "The tokenizer reads GGUF metadata with gguf_file's reader, and needs no tensor data (a vocab-only file)."
    import llama_lit.gguf_file
    import llama_lit.tokenizer
    assert llama_lit.tokenizer.gguf_metadata is llama_lit.gguf_file.gguf_metadata
    _, path = sp_gguf
    assert gguf_metadata(path, prefix="tokenizer.ggml.model") == {"tokenizer.ggml.model": "llama"}   # no tensors
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:30_000])                          # the vocabulary is cut
    with pytest.raises(ValueError, match="cut.gguf"): gguf_metadata(cut)
    cut.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file"): gguf_metadata(cut)


def test_sentencepiece_proto_roundtrip():
    "The hand-written ModelProto of the shipped pieces tokenizes like the shipped file."
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(default_tokenizer_path()))
    n = sp.vocab_size()
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 1 for i in range(n)]
    rebuilt = SentencePieceProcessor(model_proto=sentencepiece_proto(
        [sp.id_to_piece(i) for i in range(n)], [sp.get_score(i) for i in range(n)], types))
    for s in TEXTS: assert rebuilt.encode(s) == sp.encode(s)


# ---------------------------------------------------------------- shipped SentencePiece, formats, errors

def test_shipped_sentencepiece():
    tok = Tokenizer()
    assert (tok.kind, tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == ("sentencepiece", 4096, 1, 2, -1, True)
    assert tok.stop_tokens == [2] and tok.chat_template is None and tok.sp_model is tok.model
    for s in TEXTS: assert tok.decode(tok.encode(s, bos=True, eos=True)) == s


def test_sibling_chat_template(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(default_tokenizer_path().read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "default", "template": "T"}]}))
    assert Tokenizer(tmp_path).chat_template == "T"


def test_formats_by_content(tmp_path, hf_dir):
    for name, src in [("a.bin", default_tokenizer_path()), ("b.bin", llama3_tokenizer_path()),
                      ("c.bin", hf_dir / "tokenizer.json"), ("d.bin", SMOLLM2)]:
        (tmp_path / name).symlink_to(src)
    assert [tokenizer_format(tmp_path / n) for n in "a.bin b.bin c.bin d.bin".split()] == ["sentencepiece", "tiktoken", "hf", "gguf"]


def test_find_tokenizer(tmp_path):
    assert find_tokenizer(SMOLLM2) == SMOLLM2
    assert find_tokenizer(tmp_path) is None and find_tokenizer(tmp_path / "missing") is None
    (tmp_path / "one.gguf").write_bytes(b"GGUF")
    assert find_tokenizer(tmp_path) == tmp_path / "one.gguf"
    (tmp_path / "original").mkdir(); (tmp_path / "original" / "tokenizer.model").write_bytes(b"x")
    assert find_tokenizer(tmp_path) == tmp_path / "original" / "tokenizer.model"
    (tmp_path / "tokenizer.model").write_bytes(b"x")
    assert find_tokenizer(tmp_path) == tmp_path / "tokenizer.model"
    (tmp_path / "tokenizer.json").write_text("{}")
    assert find_tokenizer(tmp_path) == tmp_path / "tokenizer.json"     # HF folders: tokenizer.json first


FORMATS = "tiktoken tokenizer.model, a Hugging Face tokenizer.json, or a .gguf file"


@pytest.mark.parametrize("data", [b"", b"hello world\nthis is a text file\n", bytes(random.Random(0).randrange(256) for _ in range(4096)),
                                  b"\x0a\x05junk" + bytes(range(200)), b'{"not": "a tokenizer"}', b"aGk= 0\naGk= x\n"],
                         ids=["empty", "text", "random", "protobuf-looking", "json", "bad-tiktoken"])
def test_unknown_files_are_refused(tmp_path, data):
    (tmp_path / "tokenizer.model").write_bytes(data)
    with pytest.raises(ValueError, match=FORMATS):
        Tokenizer(tmp_path / "tokenizer.model")


def test_refusals(tmp_path):
    (tmp_path / "small.model").write_text("aGk= 0\naGo= 1\n")
    with pytest.raises(ValueError, match="128,000"):
        Tokenizer(tmp_path / "small.model")                            # another tiktoken vocabulary (e.g. Llama 4's)
    with pytest.raises(ValueError, match="'t5' is not supported"):
        Tokenizer(_gguf(tmp_path / "t5.gguf", add_tokenizer_model="t5", add_token_list=["a"]))
    with pytest.raises(ValueError, match="'qwen2' is not supported"):
        Tokenizer(_gguf(tmp_path / "q.gguf", add_tokenizer_model="gpt2", add_tokenizer_pre="qwen2", add_token_list=["a"],
                        add_token_merges=[]))
    with pytest.raises(ValueError, match="None is not supported"):
        Tokenizer(_gguf(tmp_path / "none.gguf", add_name="no tokenizer"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Tokenizer(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer(tmp_path / "missing.model")


def test_missing_bos_is_an_error(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models
    HFTokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.stop_tokens) == (-1, -1, False, [])
    assert tok.encode("ab", bos=False, eos=False) == [0, 1]
    with pytest.raises(ValueError, match="no BOS token"):
        tok.encode("ab", bos=True, eos=False)


def test_gguf_sentencepiece_extra_unknown_pieces(tmp_path):
    "Phi-3-style: padding pieces typed unknown (2) besides unknown_token_id load as llama.cpp reads them (as control pieces)."
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(default_tokenizer_path()))
    n = sp.vocab_size()
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 1 for i in range(n)]
    pads = [f"[PAD{n + k:05d}]" for k in range(53)]
    path = _gguf(tmp_path / "phi3ish.gguf", add_tokenizer_model="llama", add_token_list=[sp.id_to_piece(i) for i in range(n)] + pads,
                 add_token_scores=[sp.get_score(i) for i in range(n)] + [0.0] * 53, add_token_types=types + [2] * 53,
                 add_bos_token_id=1, add_eos_token_id=2, add_unk_token_id=0)
    tok = Tokenizer(path)
    assert tok.n_words == n + 53 and all(tok.special_tokens[p] == n + k for k, p in enumerate(pads))
    assert tok.stop_tokens == [2]
    for s in TEXTS + [" ".join(pads[:3])]:
        assert tok.encode(s, bos=True, eos=False) == [1] + sp.encode(s), s[:40]      # plain text: the pads never appear
    assert tok.encode("hi" + pads[7], bos=False, eos=False, allow_special=True) == sp.encode("hi") + [n + 7]
    assert tok.decode(sp.encode("hello there")) == "hello there"


def test_gguf_sentencepiece_bad_vocabulary_message(tmp_path):
    "A GGUF vocabulary sentencepiece cannot load is named as the GGUF's tokenizer, not as 'a SentencePiece model'."
    path = _gguf(tmp_path / "bad.gguf", add_tokenizer_model="llama", add_token_list=["<unk>", "<s>", "</s>", "a", "a"],
                 add_token_scores=[0.0] * 5, add_token_types=[2, 3, 3, 1, 1], add_bos_token_id=1, add_eos_token_id=2,
                 add_unk_token_id=0)
    with pytest.raises(ValueError, match="the GGUF's 'llama' tokenizer") as e:
        Tokenizer(path)
    assert "not a SentencePiece model" not in str(e.value)
