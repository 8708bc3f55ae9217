"""Token alignment: carrying a peer's top-k logits over to another tokenizer (FedMKT's MinED + DTW).

With heterogeneous tokenizers a peer's payload is indexed by *its* vocabulary and *its* token
positions. FedMKT (FATE-LLM, after FuseLLM) converts it in three steps, each a pure function here:

1. :func:`normalize_token` turns a vocabulary string into the text it stands for, so that
   SentencePiece (``▁the``), byte-level BPE (``Ġthe``) and byte-fallback (``<0x0A>``) pieces compare.
2. :func:`vocab_mapping` (MinED, once per pair of tokenizers and direction): each source id goes to
   the target id whose normalised text is nearest in edit distance.
3. :func:`align_sequences` (DTW, per public example) aligns two tokenisations of one text with the
   edit distance as cost; :func:`align_topk` then gives each target row the source top-k of the row
   it matches 1:1 (indices through the mapping) and a one-hot on its own token everywhere else.

Positions: payload row ``t`` predicts token ``t + 1`` (:mod:`~fedbiot_pl.distillation.topk`), so rows
are matched by the tokens they predict, ``tokens[1:]``: the DTW runs over the whole sequences (a BOS
or a first token without a counterpart is absorbed there) and target row ``t`` takes source row ``s``
only when target token ``t + 1`` and source token ``s + 1`` are a 1:1 pair with the same text (or,
given ``source_ids``, the mapping sends one to the other): both rows then predict the same piece
after the same prefix. FedMKT matches row ``t`` by its input token ``t`` and puts its fallback
one-hot there; here the fallback one-hot is on token ``t + 1``, the row's label.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FILL_VALUE = -1e4
"""Logit of a padding slot: exactly representable in float16, and ``exp(-1e4 / tau) == 0``."""

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_MARKERS = str.maketrans({"\u2581": " ", "\u0120": " ", "\u010a": "\n"})  # '▁', 'Ġ' -> space, 'Ċ' -> newline


def _printable(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E or 0xA1 <= byte <= 0xAC or 0xAE <= byte <= 0xFF


def normalize_token(token: str) -> str:
    """The text a vocabulary string stands for, so that pieces of different tokenizers compare.

    Mapped, wherever they occur: ``▁`` (SentencePiece) and ``Ġ`` (GPT-2 byte-level BPE) to a space,
    ``Ċ`` (GPT-2) to a newline. They become a space rather than vanishing, so that ``▁s`` maps to
    ``Ġs`` and not to ``s``. A whole byte-fallback piece ``<0xNN>`` becomes ``chr(NN)`` for an ASCII
    byte and GPT-2's stand-in character for a byte ``>= 0x80`` (``chr(NN)`` if printable Latin-1, else
    ``chr(256 + n)``), so the byte pieces of both families coincide. Nothing else changes (LLaMA-2's
    letter piece ``Ġ`` is read as a space too).

    Args:
        token: one vocabulary string (``tokenizer.convert_ids_to_tokens`` output).

    Returns:
        The normalised string.
    """
    byte_piece = _BYTE_PIECE.fullmatch(token)
    if byte_piece is None:
        return token.translate(_MARKERS)
    byte = int(byte_piece.group(1), 16)
    if byte < 0x80 or _printable(byte):
        return chr(byte)
    return chr(256 + sum(not _printable(b) for b in range(byte)))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _distances(queries: np.ndarray, words: np.ndarray) -> np.ndarray:
    """``(Q, V)`` edit distances between ``(Q, n)`` and ``(V, L)`` code points (one length per side).

    One dynamic-programming row per query character for all pairs at once: with
    ``c[j] = min(prev[j] + 1, prev[j - 1] + (query[i] != word[j]))`` the insertion chain
    ``row[j] = min(c[j], row[j - 1] + 1)`` is ``cummin(c[j] - j) + j``.
    """
    steps = np.arange(words.shape[1] + 1, dtype=np.int32)
    row = np.broadcast_to(steps, (queries.shape[0], words.shape[0], steps.size))
    for i in range(queries.shape[1]):
        best = np.minimum(row[..., 1:] + 1, row[..., :-1] + (words[None] != queries[:, None, i, None]))
        best = np.concatenate([np.full((*best.shape[:2], 1), i + 1, dtype=np.int32), best], axis=-1)
        row = np.minimum.accumulate(best - steps, axis=-1) + steps
    return row[..., -1]


def _by_length(texts: Sequence[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``texts`` grouped by length: per length, the positions (ascending) and their code points."""
    groups: dict[int, list[int]] = {}
    for pos, text in enumerate(texts):
        groups.setdefault(len(text), []).append(pos)
    return {n: (np.array(pos), np.array([[ord(c) for c in texts[p]] for p in pos], np.int32).reshape(len(pos), n))
            for n, pos in groups.items()}


def vocab_mapping(source_vocab: Sequence[str], target_vocab: Sequence[str],
                  overrides: Mapping[int, int] | None = None) -> Tensor:
    """MinED: for every source id, the target id whose normalised text is nearest in edit distance.

    Exact matches of the normalised text come first (a dictionary). Every other source token is
    compared with the **whole** target vocabulary, vectorised over the targets of one length; the
    lengths are visited by increasing ``|len(target) - len(source)|``, a lower bound of the distance,
    and the search stops once it exceeds the best distance found, so the result is the true minimum
    over all target tokens. Ties (equal text or equal distance) go to a regular piece before a
    byte-fallback piece ``<0xNN>`` (LLaMA-2's ``e`` before its ``<0x65>``), then to the smallest id.

    Args:
        source_vocab: source token strings, indexed by id.
        target_vocab: target token strings, indexed by id (not empty).
        overrides: source id -> target id pairs set as given (e.g. BOS/EOS/PAD/UNK to their peers).

    Returns:
        ``(len(source_vocab),)`` int64 target ids.
    """
    order = sorted(range(len(target_vocab)), key=lambda t: (_BYTE_PIECE.fullmatch(target_vocab[t]) is not None, t))
    texts = [normalize_token(target_vocab[t]) for t in order]  # texts[r]: the target of rank r
    exact: dict[str, int] = {}
    for rank, text in enumerate(texts):
        exact.setdefault(text, rank)
    buckets = _by_length(texts)
    out = []
    for token in source_vocab:
        text = normalize_token(token)
        best = (0, exact[text]) if text in exact else (sys.maxsize, sys.maxsize)  # (distance, rank)
        query = np.array([[ord(c) for c in text]], np.int32).reshape(1, len(text))
        for length in sorted(buckets, key=lambda n: abs(n - len(text))):
            if abs(length - len(text)) > best[0]:
                break
            ranks, chars = buckets[length]
            dist = _distances(query, chars)[0]
            first = int(dist.argmin())  # ranks ascend, so the first minimum has the smallest rank
            best = min(best, (int(dist[first]), int(ranks[first])))
        out.append(order[best[1]])
    for sid, tid in (overrides or {}).items():
        out[sid] = tid
    return torch.tensor(out, dtype=torch.int64)


@dataclass(frozen=True)
class Alignment:
    """A DTW path between two tokenisations: monotone ``(source position, target position)`` pairs.

    Every position of both sides is in at least one pair. A target position is matched **1:1** when
    it has exactly one pair and its source position has no other pair; otherwise it belongs to a
    1:many or many:1 group (:meth:`sources_of` and :meth:`targets_of` list the groups).
    """

    pairs: tuple[tuple[int, int], ...]
    cost: int
    num_source: int
    num_target: int

    def sources_of(self) -> list[list[int]]:
        """Per target position, the source positions aligned with it (ascending)."""
        out: list[list[int]] = [[] for _ in range(self.num_target)]
        for s, t in self.pairs:
            out[t].append(s)
        return out

    def targets_of(self) -> list[list[int]]:
        """Per source position, the target positions aligned with it (ascending)."""
        out: list[list[int]] = [[] for _ in range(self.num_source)]
        for s, t in self.pairs:
            out[s].append(t)
        return out

    def one_to_one(self) -> list[int | None]:
        """Per target position, its source position if the two are matched 1:1, else ``None``."""
        targets = self.targets_of()
        return [src[0] if len(src) == 1 and len(targets[src[0]]) == 1 else None for src in self.sources_of()]


def align_sequences(source_tokens: Sequence[str], target_tokens: Sequence[str]) -> Alignment:
    """DTW alignment of two tokenisations of one text, cost = edit distance of the normalised tokens.

    The accumulated cost is ``D[i][j] = d(i, j) + min(D[i-1][j-1], D[i-1][j], D[i][j-1])``; the path
    is traced back from the last pair of tokens, preferring on equal cost the diagonal step, then a
    source step, then a target step. The ``len(source) * len(target)`` edit distances are computed
    in blocks of equal-length tokens (vectorised); the DP itself is a Python loop.

    Args:
        source_tokens: the source's token strings.
        target_tokens: the target's token strings.

    Returns:
        The :class:`Alignment` (no pairs if either side is empty).
    """
    src = [normalize_token(t) for t in source_tokens]
    tgt = [normalize_token(t) for t in target_tokens]
    n, m = len(src), len(tgt)
    if n == 0 or m == 0:
        return Alignment((), 0, n, m)
    cost = np.empty((n, m), dtype=np.int32)
    for rows, src_chars in _by_length(src).values():
        for cols, tgt_chars in _by_length(tgt).values():
            cost[np.ix_(rows, cols)] = _distances(src_chars, tgt_chars)
    cost_rows = cost.tolist()
    inf = float("inf")
    acc = [[inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0
    for i in range(1, n + 1):
        prev, row, c = acc[i - 1], acc[i], cost_rows[i - 1]
        for j in range(1, m + 1):
            row[j] = c[j - 1] + min(prev[j - 1], prev[j], row[j - 1])
    i, j, pairs = n, m, []
    while True:
        pairs.append((i - 1, j - 1))
        if i == 1 and j == 1:
            break
        i, j = min(((i - 1, j - 1), (i - 1, j), (i, j - 1)), key=lambda p: acc[p[0]][p[1]])
    return Alignment(tuple(reversed(pairs)), int(acc[n][m]), n, m)


def _fill_ids(used: list[int], k: int) -> list[int]:
    """``used`` completed to ``k`` distinct ids with the smallest ids not yet used."""
    taken, out, candidate = set(used), list(used), 0
    while len(out) < k:
        if candidate not in taken:
            out.append(candidate)
        candidate += 1
    return out


def align_topk(source_values: Tensor, source_indices: Tensor, source_tokens: Sequence[str],
               target_tokens: Sequence[str], target_ids: Sequence[int], mapping: Tensor | Sequence[int],
               source_ids: Sequence[int] | None = None, fill_value: float = FILL_VALUE) -> tuple[Tensor, Tensor]:
    """One example's source top-k carried over to the target tokenisation (see the module docstring).

    A matched target row takes its source row's entries in decreasing value (stable), each index sent
    through ``mapping``; an index reached twice keeps its first (largest) value; freed slots get
    ``fill_value`` at the smallest unused ids. Any other row (1:many, many:1, or a 1:1 pair whose text
    differs) is a one-hot on its label ``target_ids[t + 1]``: value 0 there and ``fill_value`` at the
    ``k - 1`` smallest other ids, so its softmax is one-hot. Identical tokenisations with the identity
    mapping return the payload unchanged.

    Args:
        source_values: ``(Ls - 1, k)`` the source's logits; row ``s`` predicts source token ``s + 1``.
        source_indices: ``(Ls - 1, k)`` their source vocabulary ids (any integer type).
        source_tokens: the ``Ls`` source token strings of the example.
        target_tokens: the ``Lt`` target token strings of the same text.
        target_ids: the ``Lt`` target token ids.
        mapping: source id -> target id (:func:`vocab_mapping`).
        source_ids: the ``Ls`` source token ids; when given, a 1:1 pair whose texts differ still matches
            if ``mapping[source_ids[s + 1]] == target_ids[t + 1]`` (FedMKT's second test).
        fill_value: logit of the padding slots.

    Returns:
        ``(values, indices)``, each ``(Lt - 1, k)``: values in ``source_values.dtype``, int64 target ids.
    """
    if source_values.shape != source_indices.shape or source_values.shape[0] != max(len(source_tokens) - 1, 0):
        raise ValueError(f"source payload {tuple(source_values.shape)} does not fit {len(source_tokens)} tokens")
    if len(target_ids) != len(target_tokens):
        raise ValueError(f"{len(target_ids)} target ids for {len(target_tokens)} target tokens")
    k = source_values.shape[1]
    if k < 1:
        raise ValueError("align_topk needs k >= 1")
    mapping = torch.as_tensor(mapping, dtype=torch.int64)
    mapped = mapping[source_indices.to(torch.int64)].tolist()
    vals = source_values.float().tolist()
    partner = align_sequences(source_tokens, target_tokens).one_to_one()
    rows_v, rows_i = [], []
    for t in range(len(target_tokens) - 1):
        label, pos = int(target_ids[t + 1]), partner[t + 1]  # never 0: source 0 is paired with target 0
        same = pos is not None and (
            normalize_token(source_tokens[pos]) == normalize_token(target_tokens[t + 1])
            or (source_ids is not None and int(mapping[int(source_ids[pos])]) == label))
        if same:
            s, kept = pos - 1, {}  # source row s predicts source token pos = s + 1
            for j in sorted(range(k), key=lambda j: -vals[s][j]):
                kept.setdefault(mapped[s][j], vals[s][j])
            ids = _fill_ids(list(kept), k)
            rows_v.append(list(kept.values()) + [fill_value] * (k - len(kept)))
        else:
            ids = _fill_ids([label], k)
            rows_v.append([0.0] + [fill_value] * (k - 1))
        rows_i.append(ids)
    n = len(rows_v)
    values = torch.tensor(rows_v, dtype=torch.float32).reshape(n, k).to(source_values.dtype)
    return values, torch.tensor(rows_i, dtype=torch.int64).reshape(n, k)
