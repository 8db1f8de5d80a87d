"""The gRPC API's session record without a daemon: which frame's receipt an event gets."""

from __future__ import annotations

import bisect
from typing import cast

from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from alfred_daemon.api.bridge import SessionBridge
from alfred_daemon.api.grpc_session import Attached


def attached(ends: list[float]) -> Attached:
    a = Attached(bridge=cast(SessionBridge, None), token="t", owner="o", sample_rate=16_000,
                 config=pb.SessionConfig())
    for k, end in enumerate(ends):
        a.receipts.append((end, 1000.0 + k, None if k % 2 else 2000.0 + k))
    return a


@given(st.lists(st.integers(1, 100), max_size=60), st.integers(-50, 7000))
def test_an_event_gets_the_receipt_of_the_frame_holding_its_offset(
        steps: list[int], offset: int) -> None:
    """The first frame ending at or after the offset, else the newest: the same answer as a
    binary search over the ends, found from the newest frame."""
    ends = [float(sum(steps[: k + 1])) for k in range(len(steps))]
    a = attached(ends)
    if not ends:
        assert a.receipt(offset) == (0.0, None)
        return
    i = min(bisect.bisect_left(ends, offset), len(ends) - 1)
    assert a.receipt(offset) == (1000.0 + i, None if i % 2 else 2000.0 + i)
