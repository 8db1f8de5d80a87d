"""The gRPC surface's knobs: the config file's ``[grpc]`` table."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.config import check_range
from .convert import MAX_FRAME_BYTES

MESSAGE_OVERHEAD_BYTES = 1024
"""Room above a largest audio frame for the rest of its ClientMessage (tags, lengths,
sequence, capture_time): a few dozen bytes, rounded up generously."""


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    listen: str = "127.0.0.1:50051"
    max_message_bytes: int = 4 << 20
    """gRPC's own limit on one message either way. It must admit a ClientMessage carrying
    the largest frame the API documents (1 MiB of audio), or such frames would fail with
    the transport's RESOURCE_EXHAUSTED instead of being taken."""
    write_deadline_s: float = 10.0
    """A write blocked this long (client not reading) cancels the stream."""
    resume_window_s: float = 30.0
    outbox_limit: int = 256
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_range("grpc.max_message_bytes", self.max_message_bytes,
                    MAX_FRAME_BYTES + MESSAGE_OVERHEAD_BYTES, 1 << 30)
