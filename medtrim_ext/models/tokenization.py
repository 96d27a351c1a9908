"""A BERT-style WordPiece tokenizer trained on the report corpus itself (no downloads).

    >>> tok = train_wordpiece_tokenizer(texts, vocab_size=4000, out_dir="runs/tokenizer")
    >>> tok(["Small left pleural effusion."], return_tensors="pt")["input_ids"]  # [CLS] ... [SEP]
    >>> tok = load_tokenizer("runs/tokenizer")

Built with the ``tokenizers`` library and wrapped as a ``transformers`` fast tokenizer (not
``BertTokenizer(vocab_file=...)``, which transformers 5 builds without reading the file).

Training is deterministic: the same texts give the same vocabulary and ids, so a seeded run can
be repeated exactly. (The ``tokenizers`` WordPiece trainer is not: it breaks ties between equally
frequent merges in hash-map order, and even its vocabulary *set* changes between calls.) The
vocabulary is the alphabet (each character, and each as a ``##`` continuation) plus the most
frequent whole words, ties broken alphabetically; a word outside it splits into characters, never
``[UNK]``. That suits report corpora, whose vocabulary is small; for large clinical corpora
use a pretrained tokenizer (``model.tokenizer: <local dir>``).
"""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path
from collections import Counter
from typing import Iterable

from ..utils.checks import check_int

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] gets id 0


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 1,
                              lowercase: bool = True, out_dir=None, model_max_length: int = 512):
    """Train a WordPiece tokenizer on ``texts`` and return a ``PreTrainedTokenizerFast``.

    BERT normalisation (lowercased when ``lowercase``) and pre-tokenisation, special tokens
    ``[PAD]=0, [UNK], [CLS], [SEP], [MASK]``, the BERT post-processor (``[CLS] A [SEP]``,
    ``[CLS] A [SEP] B [SEP]``). The alphabet always holds ASCII letters, digits and punctuation,
    so unseen words split into pieces instead of becoming ``[UNK]``. ``vocab_size`` caps the
    total, except that the alphabet is always kept whole. Deterministic. With ``out_dir``, the
    tokenizer is saved there (``save_pretrained``) atomically: written to a temporary folder,
    then renamed into place. ``ValueError`` when no text has a non-blank character.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string (wrap it in a list)")
    corpus = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if t.strip():
            corpus.append(t)
    if not corpus:
        raise ValueError("texts has no non-empty text to train a tokenizer on")
    check_int("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    check_int("min_frequency", min_frequency)
    check_int("model_max_length", model_max_length, minimum=2)

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=None, lowercase=bool(lowercase))
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = Tokenizer(models.WordPiece(_vocabulary(corpus, normalizer, pre_tokenizer, vocab_size,
                                                 min_frequency, lowercase),
                                     unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=model_max_length, padding_side="right",
                                   do_lower_case=bool(lowercase))
    if out_dir is not None:
        save_tokenizer(fast, out_dir)
    return fast


def _vocabulary(corpus, normalizer, pre_tokenizer, vocab_size: int, min_frequency: int,
                lowercase: bool) -> dict[str, int]:
    """Special tokens, the alphabet (plain and ``##``), then whole words by (-count, word)."""
    counts: Counter = Counter()
    for text in corpus:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = set(string.ascii_lowercase + string.digits + string.punctuation)
    if not lowercase:
        alphabet |= set(string.ascii_uppercase)
    alphabet |= {c for word in counts for c in word}
    tokens = list(SPECIAL_TOKENS)
    for c in sorted(alphabet):
        tokens += [c, "##" + c]
    seen = set(tokens)
    words = sorted((w for w, n in counts.items() if n >= min_frequency and w not in seen),
                   key=lambda w: (-counts[w], w))
    tokens += words[:max(vocab_size - len(tokens), 0)]
    return {t: i for i, t in enumerate(tokens)}


def save_tokenizer(tokenizer, out_dir) -> Path:
    """``tokenizer.save_pretrained`` into a temporary sibling folder, then rename it to
    ``out_dir`` (replacing an existing one), so no reader ever sees a half-written tokenizer."""
    from ..utils.io import OutputWriteError, make_temp_dir

    out = Path(out_dir)
    tmp = make_temp_dir(out)   # 0777 less the umask, not mkdtemp's 0700
    old = None
    try:
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            if not out.is_dir():
                raise ValueError(f"tokenizer out_dir {str(out)!r} exists and is not a folder")
            old = make_temp_dir(out, suffix=".old")
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)  # put the previous tokenizer back
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):   # a full disk
            raise OutputWriteError(out, exc, existed=out.exists()) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def load_tokenizer(path):
    """Load a tokenizer folder saved by :func:`train_wordpiece_tokenizer` (or any local
    Hugging Face tokenizer folder); never downloads."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"tokenizer folder {str(p)!r} does not exist")
    if not (p / "tokenizer.json").is_file() and not (p / "vocab.txt").is_file():
        raise ValueError(f"tokenizer folder {str(p)!r} has no tokenizer.json or vocab.txt")
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load tokenizer from {str(p)!r}: {exc}") from None
