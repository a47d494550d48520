"""Text tokenizer (word-level, `tokenizers` library) and action tokenizer (discrete / binned).

Token ids: ``[0, text_vocab)`` are words, ``[text_vocab, text_vocab + action_vocab)`` are action
tokens; text and action tokens share the backbone's embedding table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from kv_vla_ros.vla.kv_vla.config import ActionSpaceConfig

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"
SPECIAL_TOKENS = [PAD, UNK, BOS]

# Mission words of MiniGrid (Memory*, GoTo*, Fetch, Unlock, ...) and the BabyAI grammar.
MISSION_WORDS = """
go to the a an matching object at end of hallway pick up open put next and then after you
get use key door ball box goal square grid room red green blue purple yellow grey gray
behind in front on your left right first unlock fetch avoid lava reach traverse rooms
locked toggle drop obstruct any this that is it with from into near far close
""".split()


def build_text_tokenizer(extra_words: list[str] | None = None) -> Tokenizer:
    """A lowercase word-level tokenizer over MISSION_WORDS (+ ``extra_words``)."""
    words = list(SPECIAL_TOKENS)
    for w in MISSION_WORDS + [w.lower() for w in (extra_words or [])]:
        if w not in words:
            words.append(w)
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


class TextTokenizer:
    """Encodes an instruction into exactly ``length`` ids: ``[BOS] words... [PAD]...``."""

    def __init__(self, tokenizer: Tokenizer, length: int):
        self.tokenizer = tokenizer
        self.length = length
        vocab = tokenizer.get_vocab()
        for special in SPECIAL_TOKENS:
            if special not in vocab:
                raise ValueError(f"tokenizer.json: special token {special} missing from the vocabulary")
        self.pad_id, self.unk_id, self.bos_id = (vocab[s] for s in SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, instruction: str) -> np.ndarray:
        """Instruction -> int64 ids of shape (length,) (truncated / right-padded)."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction: expected a non-empty string, got {instruction!r}")
        ids = [self.bos_id] + self.tokenizer.encode(instruction.strip()).ids
        ids = ids[: self.length]
        ids += [self.pad_id] * (self.length - len(ids))
        return np.asarray(ids, dtype=np.int64)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path, length: int) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer.json: not found at {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"tokenizer.json: cannot be parsed ({path}): {exc}") from exc
        return cls(tok, length)


class ActionTokenizer:
    """Maps actions <-> action-token indices in ``[0, action_vocab)`` (add the text offset for ids).

    Discrete: token = action id. Continuous (OpenVLA): ``x -> clip(2 (x - q01)/(q99 - q01) - 1,
    -1, 1)`` then ``bins`` uniform bins over [-1, 1], one token per dimension; decoding returns
    bin centres, un-normalized to robot units.
    """

    def __init__(self, config: ActionSpaceConfig):
        self.config = config
        if config.kind == "continuous":
            self.q01 = np.asarray(config.q01, dtype=np.float64)
            self.q99 = np.asarray(config.q99, dtype=np.float64)
            edges = np.linspace(-1.0, 1.0, config.bins + 1)
            self.centres = (edges[:-1] + edges[1:]) / 2

    @property
    def tokens_per_action(self) -> int:
        return self.config.tokens_per_action

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Actions (T,) int for discrete or (T, dim) float -> tokens (T, tokens_per_action) int64."""
        cfg = self.config
        actions = np.asarray(actions)
        if cfg.kind == "discrete":
            actions = actions.reshape(-1)
            if actions.size and (actions.min() < 0 or actions.max() >= cfg.num_actions):
                raise ValueError(f"actions: ids must be in [0, {cfg.num_actions}), "
                                 f"got {actions.min()}..{actions.max()}")
            return actions.astype(np.int64).reshape(-1, 1)
        if actions.ndim != 2 or actions.shape[1] != cfg.dim:
            raise ValueError(f"actions: expected shape (T, {cfg.dim}), got {actions.shape}")
        norm = np.clip(2.0 * (actions - self.q01) / (self.q99 - self.q01) - 1.0, -1.0, 1.0)
        idx = np.floor((norm + 1.0) / 2.0 * cfg.bins).astype(np.int64)
        return np.clip(idx, 0, cfg.bins - 1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens (tokens_per_action,) -> action: (1,) int64 discrete, (dim,) float32 continuous."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if self.config.kind == "discrete":
            return tokens[:1].copy()
        norm = self.centres[tokens]
        return ((norm + 1.0) / 2.0 * (self.q99 - self.q01) + self.q01).astype(np.float32)

    @staticmethod
    def stats(actions: np.ndarray) -> tuple[list[float], list[float]]:
        """q01/q99 per dimension of continuous actions (N, dim), widened if degenerate."""
        q01 = np.quantile(actions, 0.01, axis=0)
        q99 = np.quantile(actions, 0.99, axis=0)
        q99 = np.where(q99 - q01 < 1e-6, q01 + 1e-3, q99)
        return q01.tolist(), q99.tolist()


__all__ = ["TextTokenizer", "ActionTokenizer", "build_text_tokenizer", "MISSION_WORDS", "SPECIAL_TOKENS"]
