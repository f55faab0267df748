"""Train / dev / test splits of one corpus, drawn across its whole length with a fixed seed.

Corpora like AISHELL number their utterances in reading order, so neighbouring ids share an article, a topic or
a kind of prompt (commands, letters). Cutting the sorted ids into blocks hands one topic to the test set alone
(the last split put entertainment news in the test and only property news in training). Here the sorted ids are
cut into small blocks of consecutive ids, and every block gives its share to test and dev, chosen at random
inside the block: each topic is in all three sets, and no utterance is in two.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """Utterance ids of each set, in sorted order."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, uid: str) -> str:
        """The name of the set that holds ``uid``."""
        for name in ("train", "dev", "test"):
            if uid in getattr(self, name):
                return name
        raise KeyError(uid)


def stratified_split(ids: Sequence[str], *, dev: int, test: int, seed: int, block: int = 10) -> Split:
    """Split ``ids`` into exactly ``test`` and ``dev`` held-out ids and the rest for training.

    Sorted ids are cut into blocks of ``block``; block b gets the test (and dev) quota that keeps the running
    total proportional (so the counts come out exact), its members drawn by ``random.Random(seed)``.
    """
    ordered = sorted(set(ids))
    n = len(ordered)
    if n != len(ids):
        raise ValueError("ids must be unique")
    if dev < 0 or test < 0 or dev + test > n:
        raise ValueError(f"cannot hold out {dev} + {test} of {n} utterances")
    rng = random.Random(seed)
    sets: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for start in range(0, n, block):
        members = ordered[start : start + block]
        end = start + len(members)
        n_test = round(end * test / n) - round(start * test / n)
        n_dev = round(end * dev / n) - round(start * dev / n)
        rng.shuffle(members)
        sets["test"] += members[:n_test]
        sets["dev"] += members[n_test : n_test + n_dev]
        sets["train"] += members[n_test + n_dev :]
    return Split(*(tuple(sorted(sets[name])) for name in ("train", "dev", "test")))
