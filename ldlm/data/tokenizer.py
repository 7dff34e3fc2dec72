"""A sentencepiece tokenizer that round-trips normalised text exactly.

Identity normalisation, no whitespace collapsing, no dummy prefix and byte fallback: every
character survives (rare ones as UTF-8 byte pieces, newlines as <0x0A>), and the tokens of
consecutive pieces of text concatenate to the tokens of a valid encoding of the whole, which
is what lets `ldlm.data.blocks` tokenise sentence by sentence.

Special ids: 0 <pad>, 1 <unk> (unused with byte fallback), 2 </s> (EOS), 3 <mask> (for
input masking in later stages).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Iterable, Sequence

import sentencepiece as spm

from ldlm.config import TokenizerConfig
from ldlm.errors import DataError, MissingStageError

PAD_ID, UNK_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
MODEL_FILE = "spm.model"
MODEL_TYPES = ("unigram", "bpe")  # sentencepiece model types


def through_eos(ids: Iterable[int]) -> list[int]:
    """Token ids up to and including the first EOS (all of them when there is none)."""
    ids = [int(i) for i in ids]
    return ids[:ids.index(EOS_ID) + 1] if EOS_ID in ids else ids


class Tokenizer:
    """Thin wrapper over a SentencePieceProcessor with the project's special ids."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self.sp = processor
        assert (self.sp.pad_id(), self.sp.eos_id()) == (PAD_ID, EOS_ID)
        assert self.sp.piece_to_id("<mask>") == MASK_ID

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @classmethod
    def load(cls, path) -> "Tokenizer":
        path = pathlib.Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise MissingStageError("tokenizer model", path, "tokenizer")
        return cls(spm.SentencePieceProcessor(model_file=str(path)))

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, up to the first EOS; padding and <mask> are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, MASK_ID):
                out.append(i)
        return self.sp.decode(out)


def _training_lines(texts: Iterable[str]) -> Iterable[str]:
    # Paragraphs, not whole documents: pieces never span a newline anyway, and
    # sentencepiece caps the length of one training "sentence".
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(texts: Sequence[str], cfg: TokenizerConfig, out_dir) -> Tokenizer:
    """Trains on `texts` (the training split) and writes `out_dir/spm.model` and `.vocab`."""
    if not texts:
        raise DataError("cannot train a tokenizer on an empty training split")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / MODEL_FILE.removesuffix(".model")
    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_training_lines(texts)),
            model_prefix=str(prefix),
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            max_sentence_length=1 << 16,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
            control_symbols=["<mask>"],
            hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary (logged)
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        if "required_chars" in str(e):
            raise DataError(f"tokenizer.vocab_size={cfg.vocab_size} is too small for the "
                            f"characters of this corpus ({str(e).strip()})") from None
        raise
    tokenizer = Tokenizer.load(out_dir / MODEL_FILE)
    if tokenizer.vocab_size < cfg.vocab_size:
        logging.getLogger("ldlm.data").warning(
            "the corpus supports only %d pieces; tokenizer.vocab_size=%d was lowered",
            tokenizer.vocab_size, cfg.vocab_size)
    return tokenizer
