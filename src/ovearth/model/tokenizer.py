"""SAM 3's text tokenizer: CLIP byte-level BPE, padded to 32 tokens.

SAM 3 tokenizes prompts with the CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``,
OpenAI, MIT licence, shipped in ``ovearth/model/assets`` with its licence). A model
directory that carries its own tokenizer files is tokenized with those; otherwise the
built-in tokenizer below serves. It is built the way CLIP builds its vocabulary: the
256 byte symbols, the same with the end-of-word marker ``</w>``, one entry per merge
rule, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407, also padding).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase

from ..constants import TEXT_MAX_LENGTH

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Number of merge rules CLIP keeps from the BPE file (vocabulary size 49408).
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the remaining bytes map, in order, to
    code points from 256 upwards.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def builtin_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer built from the vocabulary shipped with ovearth (offline)."""
    raw = resources.files("ovearth.model").joinpath("assets").joinpath(_BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    # Byte symbols in the order of the byte table (printable bytes first, then the rest).
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = TEXT_MAX_LENGTH
    return tokenizer


def load_tokenizer(source: str | Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model, or the built-in one.

    Args:
        source: a local model directory or hub id that may carry tokenizer files, or
            None for the built-in tokenizer.

    Returns:
        A tokenizer; the built-in CLIP tokenizer when ``source`` has none.

    """
    if source is not None:
        path = Path(source)
        has_files = path.is_dir() and any(
            (path / name).exists() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
        )
        if has_files or not path.exists():
            try:
                return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
            except (OSError, ValueError):
                pass
    return builtin_tokenizer()


@dataclass
class Tokens:
    """Token ids and attention mask of a batch of prompts, ``[P, T]`` each."""

    input_ids: Tensor
    attention_mask: Tensor


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> Tokens:
    """Tokenize prompts exactly as ``Sam3Processor`` does (pad/truncate to 32).

    Args:
        tokenizer: a CLIP tokenizer.
        prompts: ``P`` prompt strings.

    Returns:
        ``[P, 32]`` ids and mask (CPU tensors).

    """
    enc = tokenizer(
        prompts, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    return Tokens(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"].to(torch.long))
