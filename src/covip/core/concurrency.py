"""Bounded concurrency for stages that call a model per item outside the batch interface."""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def run_concurrently(
    fn: Callable[[T], R], items: Iterable[T], *, concurrency: int, desc: str, file=None
) -> Iterator[R]:
    """Apply `fn` to items with bounded concurrency, yielding results in input order, with progress."""
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, file=file, mininterval=1.0, dynamic_ncols=False, ascii=True)
    if concurrency <= 1:
        for item in items:
            result = fn(item)
            bar.update()
            yield result
        bar.close()
        return
    # A bounded window of futures: a result is dropped as soon as it is yielded, so a stage that
    # streams its output (synthesis writes each image as it comes) never holds all results at once.
    window: deque = deque()
    pending = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for item in itertools.islice(pending, 2 * concurrency):
            window.append(pool.submit(fn, item))
        while window:
            result = window.popleft().result()
            for item in itertools.islice(pending, 1):
                window.append(pool.submit(fn, item))
            bar.update()
            yield result
    bar.close()
