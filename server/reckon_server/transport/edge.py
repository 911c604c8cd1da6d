"""The edge every reckon.v1 call passes through.

It wraps each method handler so that, in the handler's own task: undecodable request bytes
become INVALID_BODY (grpc would answer INTERNAL), a request with NUL in a string is refused
(see `text`), the bearer key is authenticated and the principal set for the servicer, and
every ReckonError is turned into its status by `status.to_grpc_status`. Anything else is
logged under an incident id and answered INTERNAL without detail. A streaming call whose
caller stops taking its messages is ended CALLER_STALLED: HTTP/2 flow control would otherwise
hold it, and whatever its servicer holds, for as long as the connection lives. One whose key
is revoked while it runs is ended UNAUTHENTICATED: its key was checked only when it started.

Messages of the delivery stream are the exception to the NUL check here: a generic walk of a
batch would cost as much as the rest of its decoding, so the stream checks the strings of
each report itself, where it reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import Message
from grpc import aio

from reckon_server.domain.principals import Principal
from reckon_server.errors import Reason, ReckonError, internal, invalid
from reckon_server.transport import context as call_context
from reckon_server.transport.status import to_grpc_status
from reckon_server.transport.text import nul_violations

log = logging.getLogger(__name__)


class Authenticator(Protocol):
    async def __call__(self, secret: str) -> Principal | None: ...

    async def until_revoked(self, secret: str) -> None: ...


_PACKAGE_PREFIX = "/reckon.v1."


@dataclass(frozen=True)
class _Refused:
    """Stands in for a request message that is refused as it is decoded."""

    error: ReckonError


_UNDECODABLE = _Refused(
    ReckonError(
        Reason.INVALID_BODY,
        "request bytes are not a valid protobuf message of this RPC",
        {"detail": "undecodable request"},
    )
)


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, *, check_text: bool
) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            message = deserializer(data) if deserializer else data
        except Exception:
            return _UNDECODABLE
        # A NUL in a string is a zero byte in the encoding: most requests have none to walk.
        if check_text and b"\x00" in data and isinstance(message, Message):
            violations = nul_violations(message)
            if violations:
                return _Refused(invalid(Reason.INVALID_REQUEST, violations))
        return message

    return parse


def _check_decoded(message: Any) -> None:
    if isinstance(message, _Refused):
        raise message.error


class EdgeInterceptor(aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticator, *, send_timeout_seconds: float) -> None:
        self._authenticate = authenticate
        self._send_timeout = send_timeout_seconds
        # Wrapping is per method, not per call: handlers are built once and reused.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_PACKAGE_PREFIX):
            return handler
        wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        deserializer = _tolerant(
            handler.request_deserializer, check_text=not handler.request_streaming
        )
        serializer = handler.response_serializer
        wrapped: grpc.RpcMethodHandler[Any, Any]
        if handler.unary_unary:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), deserializer, serializer
            )
        elif handler.unary_stream:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, request_streaming=False),
                deserializer,
                serializer,
            )
        elif handler.stream_stream:
            wrapped = grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, method, request_streaming=True),
                deserializer,
                serializer,
            )
        else:
            raise TypeError(f"{method}: client-streaming handlers are not used by reckon.v1")
        return wrapped

    async def _enter(self, context: aio.ServicerContext[Any, Any]) -> str:
        """Authenticate the call and set its principal; the call's key."""
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                header = value
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ReckonError(
                Reason.UNAUTHENTICATED, "missing 'authorization: Bearer <api key>' metadata"
            )
        principal = await self._authenticate(secret.strip())
        if principal is None:
            raise ReckonError(Reason.UNAUTHENTICATED, "unknown or revoked API key")
        call_context._principal.set(principal)
        return secret.strip()

    def _unary(self, behavior: Any, method: str) -> Any:
        async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                await self._enter(context)
                _check_decoded(request)
                return await behavior(request, context)
            except Exception as err:
                await _abort(context, method, err)

        return handle

    def _streaming(self, behavior: Any, method: str, *, request_streaming: bool) -> Any:
        async def respond(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncGenerator[Any]:
            try:
                if request_streaming:
                    request = _checked_stream(request)
                else:
                    _check_decoded(request)
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except Exception as err:
                await _abort(context, method, err)

        async def send_all(request: Any, context: aio.ServicerContext[Any, Any]) -> bool:
            """Whether every response was sent; False once the caller stalls."""
            async with contextlib.aclosing(respond(request, context)) as responses:
                async for response in responses:
                    try:
                        async with asyncio.timeout(self._send_timeout):
                            await context.write(response)
                    except TimeoutError:
                        return False
            return True

        async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            try:
                secret = await self._enter(context)
            except Exception as err:
                await _abort(context, method, err)
            ending: ReckonError
            try:
                # Cancelling the call's own task, as the call's end by its caller would, is
                # what reaches a servicer wherever it waits; the timeout scope turns that
                # cancellation, and only that one, into TimeoutError here.
                async with asyncio.timeout(None) as lifetime:
                    revocation = asyncio.create_task(self._end_on_revocation(secret, lifetime))
                    try:
                        if await send_all(request, context):
                            return
                    finally:
                        revocation.cancel()
            except TimeoutError:
                if not lifetime.expired():
                    raise
                ending = ReckonError(
                    Reason.UNAUTHENTICATED,
                    "the API key of this call was revoked",
                    {"method": method},
                )
            else:
                ending = ReckonError(
                    Reason.CALLER_STALLED,
                    f"the caller took none of this call's messages for "
                    f"{self._send_timeout:g} s; reopen the call to go on",
                    {"method": method},
                    retry_after_seconds=1.0,
                )
            # Only now that the servicer has let go of what the call held: a stalled call's
            # status waits behind its unread messages, for as long as the connection lives.
            await context.abort_with_status(to_grpc_status(ending))

        return handle

    async def _end_on_revocation(self, secret: str, lifetime: asyncio.Timeout) -> None:
        await self._authenticate.until_revoked(secret)
        lifetime.reschedule(asyncio.get_running_loop().time())


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        _check_decoded(message)
        yield message


async def _abort(context: aio.ServicerContext[Any, Any], method: str, err: Exception) -> NoReturn:
    if isinstance(err, aio.AbortError):
        raise err
    if isinstance(err, ReckonError):
        await context.abort_with_status(to_grpc_status(err))
    if isinstance(err, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
    await context.abort_with_status(to_grpc_status(internal(log, f"internal error in {method}")))
