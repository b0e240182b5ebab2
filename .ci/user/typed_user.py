"""A user's program, type-checked by mypy --strict against an installed
poolguard (a wheel, or an editable install): the types must be the
package's own, never Any (assert_type fails on Any)."""
from __future__ import annotations

from concurrent.futures import Future
from typing import List, Optional

from typing_extensions import assert_type

import poolguard


def square(x: int) -> int:
    return x * x


def main() -> None:
    with poolguard.Pool(2) as pool:
        assert_type(pool, poolguard.Pool)
        assert_type(pool.map(square, [1, 2]), List[int])
        assert_type(pool.apply_async(square, (3,)), poolguard.AsyncResult[int])
        assert_type(pool.imap(square, [1]), poolguard.IMapIterator[int])
    with poolguard.ProcessPoolExecutor(2) as executor:
        assert_type(executor.submit(square, 2), poolguard.StoppableFuture[int])
        standard: Future[int] = executor.submit(square, 2)   # a Future too
        assert_type(standard.result(), int)
        try:
            executor.submit(square, 3).result()
        except poolguard.WorkerCrashedError as exc:
            assert_type(exc.pid, Optional[int])
