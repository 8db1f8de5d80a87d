"""The gRPC server's plumbing around the Alfred service: lenient request decoding and a
health service that says what it does not know.

Both exist so that a client's mistake gets a status and a sentence, never a server-side
traceback: grpc.aio would end an undecodable request UNKNOWN and log it as an ERROR, and
the stock health service answers an unknown service name with no details.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

SERVICE = "alfred.v1.Alfred"


class Undecodable:
    """What a request's bytes became when they were not the method's message. grpc.aio
    would otherwise end the call UNKNOWN ("Unexpected DecodeError") and log a traceback per
    call for what is only a client's malformed input; the handlers answer this with
    INVALID_ARGUMENT instead."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    @property
    def message(self) -> str:
        return (f"the request is not a valid {self.type_name} message (its bytes do not parse "
                "as protobuf); send messages built from proto/alfred/v1/alfred.proto")


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse`` (a method's request deserializer), giving :class:`Undecodable` instead of
    raising for bytes that are not its message."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "request"

    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # any failure to parse is the client's bytes, never the daemon's
            return Undecodable(name)

    return lenient


async def _checked(requests: AsyncIterator[Any],
                   context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    """A streamed request's messages; an undecodable one ends the call INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        yield request


def _lenient_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a lenient deserializer, and its behaviour answering an undecodable
    request INVALID_ARGUMENT (a handler that reads with ``context.read()``, as
    StreamSession does, sees the :class:`Undecodable` itself)."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    fields: dict[str, Any] = {"request_deserializer": _lenient(parse)}
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            fields[kind] = _guarded(behaviour, streamed=kind.startswith("stream"))
    replace: Callable[..., grpc.RpcMethodHandler[Any, Any]] = handler._replace  # type: ignore[attr-defined]
    return replace(**fields)


def _guarded(behaviour: Callable[..., Any], *, streamed: bool) -> Callable[..., Any]:
    """``behaviour`` behind the Undecodable check, keeping its shape (grpc.aio calls an
    async generator function and a coroutine function differently)."""
    if inspect.isasyncgenfunction(behaviour):
        async def generate(request: Any, context: grpc.aio.ServicerContext[Any, Any],
                           ) -> AsyncIterator[Any]:
            if streamed:
                request = _checked(request, context)
            elif isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for response in behaviour(request, context):
                yield response

        return generate

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if streamed:
            request = _checked(request, context)
        elif isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return call


class LenientRequests(grpc.aio.ServerInterceptor):
    """Every method of every service on the server (Alfred, health, reflection) takes
    undecodable request bytes as a client error: INVALID_ARGUMENT with a sentence, nothing
    logged. grpc.aio would end such a call UNKNOWN ("Unexpected DecodeError") and log an
    ERROR with a traceback for each."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return handler if handler is None else _lenient_handler(handler)


class HealthService(HealthServicer):
    """The standard health service, whose NOT_FOUND for a service it does not know says so
    in a sentence (the stock one sends no details)."""

    async def Check(  # noqa: N802 -- gRPC method name
        self, request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in (SERVICE, ""):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service[:64]!r}; this server "
                                f"reports on '' (the whole server) and {SERVICE!r}")
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response
