"""Deterministic feature maths: log-mel features are computed with one BLAS thread.

OpenBLAS splits a matrix product's sums across threads, and a different split rounds
differently. The mel projection in Whisper's feature extractor is such a product, so a
process with a 2-thread BLAS and one with a 1-thread BLAS (every daemon worker) compute
features that differ in the last bits -- and on borderline audio Whisper then picks other
words ("Drop the two ..." vs "drop the two ...", measured on the shared corpus). A transcript
must not depend on which process computed it, so the engine pins the product to one thread
everywhere; it is an 80 x 201 by 201 x N product, for which threads buy nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_controller: Any = None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the body with BLAS limited to one thread (restored afterwards)."""
    global _controller  # noqa: PLW0603 -- one controller per process, built on first use
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
