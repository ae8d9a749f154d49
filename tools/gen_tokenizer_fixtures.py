#!/usr/bin/env python3
"""Builds small tokenizer.json fixtures with the structure of real MoE-model tokenizers, plus the
ids and strings HF `tokenizers` produces for a mixed test corpus.

Writes tests/fixtures/tokenizers/:
  <name>.tokenizer.json   qwen3, deepseek_v3, deepseek_v2, mixtral, llama_metaspace, gpt2_bytelevel
  corpus.json             test lines (English, Chinese, code, emoji, whitespace runs, non-NFC
                          input, special tokens inside text, empty string, seeded random lines)
  expected.json           per tokenizer: per line ids (with/without special tokens) and decoded
                          strings; plus decodes of seeded random id sequences.
Run from the repo root: python3 tools/gen_tokenizer_fixtures.py
"""
import json
import os
import random

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = os.path.join("tests", "fixtures", "tokenizers")

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_PATTERNS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
]

# DeepSeek-LLM / V2 style: the split list llama.cpp gives for "deepseek-llm", digits one by one.
DEEPSEEK_V2_PATTERNS = [
    r"[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",  # escapes: code points that NFC would change
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
]

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-experts models route each token to a few experts out of many.",
    "I'm sure they'll say it's fine, but we've seen what happens when you don't check.",
    "Attention is computed over the keys and values cached for every previous position.",
    "In 2024, the model had 235 billion parameters, of which 22 billion were active per token.",
    "She said: \"Hello, world!\" and then left -- without another word...",
    "Tokenizers split text into pieces; byte-level BPE never needs an unknown token.",
    "The weather today is sunny with a high of 23 degrees and a light breeze.",
]
CHINESE = [
    "今天天气很好，我们去公园散步吧。",
    "混合专家模型把每个词元分配给少数几个专家。",
    "深度学习需要大量的数据和计算资源。",
    "这个问题的答案是四十二。",
    "我爱北京天安门，天安门上太阳升。",
]
OTHER = [
    "Привет, как дела? Всё хорошо, спасибо.",
    "こんにちは、世界。カタカナとひらがな。",
    "Ελληνικά γράμματα και αριθμοί 123.",
    "café naïve résumé façade coöperate",
    "한국어 문장도 조금 있습니다.",
    "مرحبا بالعالم",
]
CODE = [
    "def forward(self, x):\n    return self.w2(F.silu(self.w1(x)) * self.w3(x))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "if __name__ == \"__main__\":\n    main()\n",
    "const auto it = map.find(key);  // O(1) on average\n",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
]
EMOJI = ["😀", "👍🏽", "🚀", "❤️", "👨‍👩‍👧", "🇫🇷", "✨"]


SYLLABLES = ["ka", "to", "re", "mi", "son", "der", "ing", "tion", "al", "ex", "pre", "ly", "ment", "con"]
HANZI = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持音亚阿乎照音"


def pseudo_words(rng):
    """Synthetic words and phrases so the trained vocabularies reach their target sizes."""
    out = []
    for _ in range(rng.randint(2, 8)):
        if rng.random() < 0.7:
            w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
            out.append(w.capitalize() if rng.random() < 0.2 else w)
        else:
            out.append("".join(rng.choice(HANZI) for _ in range(rng.randint(1, 4))))
    return " ".join(out)


def training_corpus(seed=1234, n=3000):
    rng = random.Random(seed)
    pools = ENGLISH * 4 + CHINESE * 2 + OTHER + CODE * 2
    lines = []
    for _ in range(n):
        k = rng.randint(1, 3)
        parts = [rng.choice(pools) for _ in range(k)]
        if rng.random() < 0.2:
            parts.append(rng.choice(EMOJI))
        if rng.random() < 0.2:
            parts.append(" " * rng.randint(2, 6))
        if rng.random() < 0.3:
            parts.append(str(rng.randint(0, 10**6)))
        parts.append(pseudo_words(rng))
        lines.append(" ".join(parts))
    return lines


def random_line(rng):
    """Mixed random text: words from every pool, random code points, whitespace runs."""
    words = " ".join(ENGLISH + CHINESE + OTHER + CODE).split(" ")
    out = []
    for _ in range(rng.randint(5, 25)):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice(words))
        elif r < 0.6:
            out.append(rng.choice(EMOJI))
        elif r < 0.7:
            out.append(rng.choice([" ", "  ", "\t", "\n", "\r\n", "   \n\n"]))
        elif r < 0.8:
            out.append(str(rng.randint(0, 10**9)))
        elif r < 0.9:  # random BMP / astral code points (no surrogates, no noncharacters)
            cps = [rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x4E00, 0x9FFF),
                               rng.randint(0x1F300, 0x1FAFF)]) for _ in range(rng.randint(1, 4))]
            out.append("".join(chr(c) for c in cps))
        else:  # combining sequences (NFC composes some)
            out.append(rng.choice("aeiouAEIOU") + rng.choice(["\u0301", "\u0300", "\u0308", "\u0323\u0302"]))
        out.append(rng.choice(["", " ", " "]))
    return "".join(out)


def test_corpus():
    fixed = [
        "",
        " ",
        "Hello world",
        "Hello, world! How are you doing today?",
        "  leading spaces and trailing   ",
        "multiple     spaces\tand\ttabs\n\nnew lines\r\nwindows",
        "\n\n\n",
        "I'm, you're, he's, we've, they'll, I'd, DON'T, I'LL",
        "Numbers: 1 12 123 1234 12345 1234567890 3.14159 -42 1e-5",
        "今天天气很好，我们去公园散步吧。",
        "混合专家模型（MoE）的路由：top-k 专家。",
        "日本語のテキストとカタカナ、ひらがな。",
        "def f(x):\n    return x ** 2  # square\n\n\tprint(f(3))",
        "emoji: 😀 👍🏽 🚀🚀 ❤️ 👨‍👩‍👧 🇫🇷✨",
        "combining: e\u0301 a\u0308 n\u0303 \u212b \u1100\u1161\u11a8 o\u0323\u0302",
        "precomposed: é ä ñ Å 각 ộ",
        "fullwidth ＡＢＣ１２３ and ligature ﬁ",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>text after<|endoftext|><|endoftext|>",
        "<think>reasoning</think> answer",
        "<｜begin▁of▁sentence｜><｜User｜>你好<｜Assistant｜>",
        "<s>[INST] hello [/INST]</s>",
        "<s><s></s> x </s>",
        "  <s>  spaced special  </s>  ",
        "A <mask> token and <mask>.",
        "hello world and hello worlds",
        "▁already▁has▁metaspace ▁",
        "long" + "o" * 300 + "ng word",
        "mixed 中文English混合text123数字",
        "Ünïcödé ÇÀÉÎÕÜ ẞ ß ſ ǅ K",
        "tabs\t\t\tand\u00a0nbsp\u3000ideographic space\u2028line sep",
        "punctuation!!! ??? ... --- *** ((())) [[]] {{}}",
        "a\u0000b control \u0007 chars \u001b[0m",
        "https://example.com/path?query=1&x=y#frag",
        "x" * 50 + " " + "中" * 40,
        "contractions with odd case: 'ſ 'K 'S 'ſt 'Ll 'lL 'D 'Ve",
        "digits of other scripts: ١٢٣ ⅫⅣ ½ ² ๑๒ 𝟎",
        "zero width​space, joiner‍x, NELnext, BOM﻿here",
        "́ a combining mark first, then 가 jamo",
        "a  \n b \t\n  \n\n  c",
        "<|im_start|><|im_start|>system<|im_end|><|im_sta partial <|im_end",
        "say hello world twice: hello world! hello  world, helloworld",
        "a<mask>b <mask> x  <mask>  y\t<mask>\n",
        "</s></s>  <s> <unk>",
        "𠀀𪛖 CJK ext B, 🧑‍💻 technologist",
    ]
    rng = random.Random(20261123)
    fixed += [random_line(rng) for _ in range(40)]
    return fixed


def train_bytelevel(pre, normalizer, specials, vocab_size, corpus):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def build_qwen3(corpus):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok = train_bytelevel(pre, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 3000, corpus)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Qwen3 lists <think> / </think> as added tokens that are not special.
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    return tok


def build_deepseek_v3(corpus):
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEEPSEEK_PATTERNS] +
        [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok = train_bytelevel(pre, normalizers.Sequence([]), [bos, eos], 2000, corpus)
    tok.add_special_tokens(["<｜User｜>", "<｜Assistant｜>"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    return tok


def build_deepseek_v2(corpus):
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEEPSEEK_V2_PATTERNS] +
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok = train_bytelevel(pre, None, [bos, eos], 1500, corpus)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def train_metaspace_bpe(corpus, vocab_size):
    """Llama-style: <unk> <s> </s>, then <0x00>..<0xFF>, then learned pieces (limited alphabet so
    that rare characters go through byte fallback)."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, limit_alphabet=150, show_progress=False)
    base.train_from_iterator(corpus, trainer=trainer)
    learned = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens([AddedToken("<unk>", normalized=False), AddedToken("<s>", normalized=False),
                            AddedToken("</s>", normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    return tok


def build_mixtral(corpus):
    tok = train_metaspace_bpe(corpus, 1500)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # Not in the real Mixtral file: a normalized added token, matched (and decoded) as "▁hello▁world".
    tok.add_tokens([AddedToken("hello world", normalized=True)])
    return tok


def build_llama_metaspace(corpus):
    tok = train_metaspace_bpe(corpus, 1200)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False),
                                     decoders.ByteFallback(), decoders.Fuse()])
    # A lstrip/rstrip special token, and a non-special normalized one.
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("hello world", normalized=True)])
    return tok


def build_gpt2_bytelevel(corpus):
    """What `tokenizers`' ByteLevelBPETokenizer-style training gives (the embedded model's kind)."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = train_bytelevel(pre, None, ["<|endoftext|>", "<pad>"], 1500, corpus)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_tokens([AddedToken("<mask>", single_word=True, normalized=False)])
    return tok


def main():
    os.makedirs(OUT, exist_ok=True)
    corpus = training_corpus()
    lines = test_corpus()
    builders = {"qwen3": build_qwen3, "deepseek_v3": build_deepseek_v3, "deepseek_v2": build_deepseek_v2, "mixtral": build_mixtral,
                "llama_metaspace": build_llama_metaspace, "gpt2_bytelevel": build_gpt2_bytelevel}
    expected = {"tokenizers_version": tokenizers.__version__, "tokenizers": {}}
    for name, build in builders.items():
        tok = build(corpus)
        path = os.path.join(OUT, name + ".tokenizer.json")
        tok.save(path, pretty=False)
        tok = Tokenizer.from_file(path)  # what the C++ side reads
        rows = []
        for line in lines:
            ids = tok.encode(line, add_special_tokens=False).ids
            ids_sp = tok.encode(line, add_special_tokens=True).ids
            rows.append({"ids": ids, "ids_special": ids_sp,
                         "decoded": tok.decode(ids_sp, skip_special_tokens=False),
                         "decoded_skip": tok.decode(ids_sp, skip_special_tokens=True)})
        rng = random.Random(sum(name.encode()) + 7)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        random_decodes = []
        for _ in range(20):
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 30))]
            random_decodes.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                                   "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
        expected["tokenizers"][name] = {"vocab_size": vocab, "lines": rows, "random_decodes": random_decodes}
    with open(os.path.join(OUT, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(lines, f, ensure_ascii=False, indent=0)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
