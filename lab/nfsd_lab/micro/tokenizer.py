"""A real CLIP BPE tokenizer whose merges make each word of the world's vocabulary one token.

Every byte symbol (and its end-of-word form) stays in the vocabulary, so a word the world never uses still
tokenizes (into pieces) instead of failing; ``vocabulary.json`` beside the model lists the words it knows.
"""

from __future__ import annotations

import json
from pathlib import Path

from nfsd_server.guidance.random_models import _bytes_to_unicode

MAX_LENGTH = 32  # the longest caption + view words + the negative prompt's 28 tokens, with BOS/EOS


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair until none is ranked."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks) + 1), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_merges(words: list[str]) -> list[str]:
    """Merges under which each of ``words`` is one token: for each word, its pieces under the merges so far
    are joined left to right by new, lower-priority merges (so no earlier word is split again)."""
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(word, ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            pieces = _bpe(word, ranks)
    return [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]


def write_word_tokenizer(folder: Path, words: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    merges = word_merges(words)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": MAX_LENGTH, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }))
    return folder
