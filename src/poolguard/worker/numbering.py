"""Item indexes for the worker's loops, as ready-made ints.

Before each item of a chunk the worker writes the item's index to its slot
(loop.py).  ``enumerate`` makes a new int for each index past 256: an
eighth of a tiny item's time in the worker.  The indexes here are made
once, grown to the longest unit seen, up to ``KEPT`` (1.3 MB at most).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence, Tuple

KEPT = 1 << 15
_indexes: list[int] = list(range(257))


def numbered(items: Sequence[Any], start: int = 0) -> Iterator[Tuple[int, Any]]:
    """``enumerate(items[start:], start)``, of a sequence, with fewer ints made."""
    have, end = len(_indexes), len(items)
    if end > have and have < KEPT:
        _indexes.extend(range(have, min(end, KEPT)))
        have = len(_indexes)
    rest = items if start == 0 else itertools.islice(items, start, None)
    if end <= have:
        return zip(itertools.islice(_indexes, start, None) if start else _indexes, rest,
                   strict=False)   # the indexes outnumber the items
    return zip(itertools.chain(itertools.islice(_indexes, start, None), itertools.count(have)),
               rest, strict=False)
