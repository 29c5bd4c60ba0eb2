"""together_lite: a dependency-free client for Together AI's chat and text completions.

One file, standard library only, Python 3.8 and newer. It is a drop-in for the
chat and text completion parts of the official ``together`` SDK::

    from together_lite import Together

    client = Together()  # reads TOGETHER_API_KEY
    response = client.chat.completions.create(
        model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
        messages=[{"role": "user", "content": "Hello!"}],
    )
    print(response.choices[0].message.content)

Streaming (``stream=True``), ``AsyncTogether``, tools, JSON mode, logprobs,
``n`` and multimodal messages work as in the SDK. See README.md.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import os
import re
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from enum import Enum

# socket, ssl and the rest are imported when first needed, so that importing
# this module stays cheap for scripts and AWS Lambda.
TYPE_CHECKING = False  # saves importing typing at run time
if TYPE_CHECKING:
    import argparse
    import asyncio
    import logging
    import socket
    import ssl
    from typing import (
        Any,
        AsyncIterator,
        Awaitable,
        Callable,
        ClassVar,
        Collection,
        Final,
        Generator,
        Iterator,
        Literal,
        Mapping,
        NamedTuple,
        Sequence,
        TypeVar,
        Union,
        overload,
    )
    from typing import Generic as _Generic

    from typing_extensions import TypedDict, Unpack

    _T = TypeVar("_T")
    _F = TypeVar("_F", bound=Callable[..., Any])
else:

    class _Subscriptable:
        """A class that takes ``Stream[ChatCompletionChunk]`` at run time, as a generic does."""

        def __class_getitem__(cls, item):
            return cls

    class _GenericAtRunTime:
        def __getitem__(self, item):
            return _Subscriptable

    _Generic = _GenericAtRunTime()  # typing.Generic, without importing typing
    _T = None

__all__ = [
    # clients
    "Together",
    "Client",
    "AsyncTogether",
    "AsyncClient",
    "Stream",
    "AsyncStream",
    "StreamAccumulator",
    # errors
    "TogetherException",
    "TogetherError",
    "APIError",
    "JSONError",
    "APIStatusError",
    "AuthenticationError",
    "InvalidRequestError",
    "BadRequestError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "APIConnectionError",
    "Timeout",
    "APITimeoutError",
    "InsecureTransportWarning",
    # result types
    "ChatCompletionResponse",
    "ChatChoice",
    "ChatMessage",
    "ChatCompletionChunk",
    "ChatChoiceDelta",
    "ChatDelta",
    "CompletionResponse",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionChoiceDelta",
    "CompletionToken",
    "ToolCall",
    "FunctionCall",
    "Usage",
    "Logprobs",
    "PromptPart",
    "InferenceWarning",
    "ErrorResponse",
    "FinishReason",
    "ObjectType",
    "MessageRole",
    # raw responses, sentinels and structured output
    "APIResponse",
    "AsyncAPIResponse",
    "Request",
    "Response",
    "NotGiven",
    "NOT_GIVEN",
    "not_given",
    "Omit",
    "omit",
    "APIResponseValidationError",
    "LengthFinishReasonError",
    "ContentFilterFinishReasonError",
    "RefusalError",
    # helpers
    "image_part",
    "video_part",
    "file_to_data_url",
]

__version__ = "1.0.0"

# -- Constants ----------------------------------------------------------------

#: The API a client talks to when neither ``base_url`` nor TOGETHER_BASE_URL says otherwise.
DEFAULT_BASE_URL: Final = "https://api.together.xyz/v1"
#: Seconds allowed for connecting, for each read and for each wait while sending (the v1 SDK's).
DEFAULT_TIMEOUT: Final = 600.0
#: Retries after a failed attempt (the v1 SDK's).
DEFAULT_MAX_RETRIES: Final = 5
#: Threads an AsyncTogether may run at once; started only when needed. Few are needed: a call waiting
#: for the network holds none, so these only send, read and parse (more only make them contend).
DEFAULT_MAX_WORKERS: Final = 8
#: The default where the event loop cannot watch sockets (Windows' proactor): each call then holds a
#: thread while it waits, and this many can wait at once.
_BLOCKING_MAX_WORKERS: Final = 512
#: Seconds before the first retry; doubled on each one after.
INITIAL_RETRY_DELAY: Final = 0.5
#: The longest wait between retries, in seconds.
MAX_RETRY_DELAY: Final = 8.0
#: The longest Retry-After honoured, in seconds; a server asking for more is not retried.
MAX_RETRY_AFTER: Final = 60.0

#: Sent with every request.
_USER_AGENT: Final = "together_lite/{} Python/{}.{}.{}".format(__version__, *sys.version_info[:3])
#: Statuses retried besides every status from 500 on.
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
#: The redirects that keep the POST and its body: the only ones followed (and only to the same origin).
_REDIRECT_STATUSES: Final = frozenset({307, 308})
#: Redirects followed for one request.
_MAX_REDIRECTS: Final = 5
#: Bytes asked of the socket per read of a stream.
_READ_SIZE: Final = 65536
#: Bytes of a large request body handed to the socket per call.
_SEND_SIZE: Final = 65536
#: The longest status or header line accepted, in bytes.
_MAX_LINE: Final = 65536
#: The most response headers accepted.
_MAX_HEADERS: Final = 100
#: Body codings decoded, besides chunked and identity.
_SUPPORTED_CODINGS: Final = frozenset({"gzip", "x-gzip", "deflate"})
#: Headers the transport sets itself, whatever the caller passes.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})
#: Bytes of an error response kept for its message.
_MAX_ERROR_BODY: Final = 1 << 20
#: Bodies up to this many bytes are read in one call; larger ones piece by piece.
_SINGLE_READ: Final = 1 << 24
#: Request heads a transport keeps built, by route, path and headers.
_HEADS_KEPT: Final = 64
#: Idle connections kept per origin.
_POOL_MAXSIZE: Final = 256
#: Seconds after which an idle connection is not reused.
_POOL_IDLE_SECONDS: Final = 30.0
#: Seconds to wait for a stream's tail (its last empty chunk) after [DONE], for reuse.
_DRAIN_SECONDS: Final = 0.25
#: Bytes of tail read after [DONE] before the connection is given up.
_DRAIN_BYTES: Final = 1 << 16
#: Hosts an API key may reach over plain http without a warning.
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
#: What a header value may not contain.
_CONTROL_CHARS: Final = r"[\x00-\x1f\x7f-\x9f]"  # patterns are compiled (and kept by re) when first used
#: A Retry-After in seconds: digits, with a fraction tolerated.
_DELAY_SECONDS: Final = r"[0-9]+(?:\.[0-9]+)?"
#: A header name: an RFC 9110 token.
_HEADER_NAME: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"

# -- Errors -------------------------------------------------------------------
#
# TogetherException (alias TogetherError)
# └── APIError                        anything the API or the network did wrong
#     ├── JSONError                   an answer or stream event that is not the JSON expected
#     ├── APIStatusError              an HTTP error status; .status_code
#     │   ├── InvalidRequestError     400, 403, 404, 415, 422 (the v1 name)
#     │   │   ├── BadRequestError            400
#     │   │   ├── PermissionDeniedError      403
#     │   │   ├── NotFoundError              404
#     │   │   └── UnprocessableEntityError   422
#     │   ├── AuthenticationError     401, or no API key at all
#     │   ├── ConflictError           409
#     │   ├── RateLimitError          429
#     │   └── InternalServerError     >= 500
#     │       └── ServiceUnavailableError    503
#     └── APIConnectionError          no usable response: refused, reset, TLS, proxy
#         └── Timeout                 connect or read timed out (v1 name)
#             └── APITimeoutError
#
# Caller mistakes (a bad argument) raise TypeError or ValueError before anything is sent.


if TYPE_CHECKING:
    _StrDict = dict[str, str]
else:
    _StrDict = dict


class _Headers(_StrDict):
    """Response headers under lower-case names, looked up in any case: ``headers.get("Retry-After")``."""

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        super().__init__((_lower(name), value) for name, value in dict(headers or {}).items())

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(_lower(name))

    def __setitem__(self, name: str, value: str) -> None:
        super().__setitem__(_lower(name), value)

    def __contains__(self, name: object) -> bool:
        return super().__contains__(_lower(name))

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(_lower(name), default)

    def copy(self) -> _Headers:
        return _Headers(self)


def _lower(name: Any) -> Any:
    return name.lower() if isinstance(name, str) else name


class Request:
    """The request a call sent, as errors and raw responses show it: method, URL and headers, never the key."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> None:
        self.method = method
        self.url = url
        self.headers: dict[str, str] = _Headers(headers)

    def __repr__(self) -> str:
        return f"<Request({self.method!r}, {self.url!r})>"


class Response:
    """An HTTP response as errors, streams and raw responses show it: the parts of ``httpx.Response`` code reads.

    ``content``, ``text`` and ``json()`` hold an error's body; a stream's body is read by iterating the stream.
    """

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str] | None = None,
        *,
        content: bytes | None = None,
        request: Request | None = None,
        reason_phrase: str = "",
        http_version: str = "HTTP/1.1",
    ) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = _Headers(headers)
        self.request = request
        self.reason_phrase = reason_phrase or _status_phrase(status_code)
        self.http_version = http_version
        self._content = content

    @property
    def content(self) -> bytes:
        """The body; raises for a stream, whose body is read by iterating it."""
        if self._content is None:
            raise RuntimeError("the body of a streamed response is read by iterating the stream")
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def url(self) -> str:
        return self.request.url if self.request is not None else ""

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    def __repr__(self) -> str:
        return f"<Response [{self.status_code} {self.reason_phrase}]>".replace(" ]", "]")


class TogetherException(Exception):
    """Root of every error together_lite raises (also named ``TogetherError``).

    Built the way the v1 SDK built it (``TogetherException(message, headers,
    request_id, http_status)``) or the way the modern SDKs do
    (``APIStatusError(message, response=..., body=...)``, ``APIError(message, request, body=...)``);
    ``code``, ``param``, ``type`` and ``request_id`` are read from the body and headers when not given.
    """

    def __init__(
        self,
        message: Any = "",
        request: Any = None,
        request_id: str | None = None,
        http_status: int | None = None,
        *,
        body: Any = None,
        response: Response | None = None,
        headers: Mapping[str, str] | None = None,
        status_code: int | None = None,
        code: Any = None,
        param: Any = None,
        error_type: Any = None,
    ) -> None:
        if isinstance(request, dict) and headers is None:  # the v1 order: (message, headers, ...)
            request, headers = None, request
        text = "" if message is None else str(message)
        super().__init__(text)
        if response is not None:
            headers = response.headers if headers is None else headers
            status_code = response.status_code if status_code is None else status_code
            request = response.request if request is None else request
        self.message = text
        self.request: Request | None = request
        self.response = response
        self.status_code = http_status if status_code is None else status_code
        self.headers: dict[str, str] = _Headers(headers)
        self.body = body
        detail = _error_detail(body)
        fields_of = detail if isinstance(detail, dict) else {}
        self.request_id = request_id or _request_id(self.headers)
        self.code = fields_of.get("code") if code is None else code
        self.param = fields_of.get("param") if param is None else param
        self.type = fields_of.get("type") if error_type is None else error_type

    @property
    def http_status(self) -> int | None:
        """The HTTP status, under the name the v1 SDK used."""
        return self.status_code

    @property
    def api_response(self) -> ErrorResponse | None:
        """The error object the server sent (``.message``, ``.type``, ``.code``, ``.param``), if any."""
        detail = _error_detail(self.body)
        return ErrorResponse._parse(detail) if type(detail) is dict else None

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (("status_code", self.status_code), ("request_id", self.request_id))
            if value is not None
        )
        return f"{type(self).__name__}({self.message!r}{extra})"


TogetherError = TogetherException


class APIError(TogetherException):
    """The API answered with an error, or the exchange failed; also errors inside a stream."""


class JSONError(APIError):
    """The API's answer was not the JSON object expected (the v1 name)."""


class APIStatusError(APIError):
    """The API answered with an HTTP error status (``status_code``)."""


class InvalidRequestError(APIStatusError):
    """The request was refused as invalid: 400, 403, 404, 415 or 422."""


class BadRequestError(InvalidRequestError):
    """HTTP 400."""


class PermissionDeniedError(InvalidRequestError):
    """HTTP 403."""


class NotFoundError(InvalidRequestError):
    """HTTP 404, for example an unknown model."""


class UnprocessableEntityError(InvalidRequestError):
    """HTTP 422."""


class AuthenticationError(APIStatusError):
    """HTTP 401, or no API key was given at all."""


class ConflictError(APIStatusError):
    """HTTP 409."""


class RateLimitError(APIStatusError):
    """HTTP 429, after the retries ran out."""


class InternalServerError(APIStatusError):
    """HTTP 500 and above, after the retries ran out."""


class ServiceUnavailableError(InternalServerError):
    """HTTP 503: the service is overloaded or not ready."""


class APIConnectionError(APIError):
    """No usable response arrived: connection refused or reset, TLS or proxy failure.

    ``retryable`` is False for failures another attempt cannot fix (a
    certificate that does not verify, an unsupported proxy, a cancelled call).
    """

    def __init__(
        self, message: Any = "Connection error.", request: Any = None, *, retryable: bool = True, **context: Any
    ) -> None:
        super().__init__(message, request, **context)
        self.retryable = retryable
        self._reason = self.message.rstrip(".")  # a short reason, for a note before a retry


class Timeout(APIConnectionError):
    """Connecting, or waiting for the next bytes of the response, took too long."""

    def __init__(self, message: Any = "Request timed out.", request: Any = None, **context: Any) -> None:
        if not isinstance(message, str) and request is None:  # the modern SDKs' APITimeoutError(request)
            message, request = "Request timed out.", message
        super().__init__(message, request, **context)


class APITimeoutError(Timeout):
    """Connecting, or waiting for the next bytes of the response, took too long."""


class InsecureTransportWarning(UserWarning):
    """The API key is about to travel unencrypted to a host that is not this machine."""


#: The error class for each status that has its own; other statuses map by range.
_STATUS_ERRORS: Final[Mapping[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    415: InvalidRequestError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _error_class(status: int) -> type[APIStatusError]:
    return _STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIStatusError)


def _parse_body(raw: bytes) -> Any:
    """The body as JSON when it is JSON, else as text; None when empty."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    if text.startswith(("data:", "event:")):  # a failed streaming request may answer in SSE
        for event in _SSEDecoder().feed(text.encode() + b"\n\n"):
            try:
                return json.loads(event.data)
            except (ValueError, RecursionError):
                break
    return text


def _text_summary(text: str) -> str:
    """A one-line summary of a non-JSON body: an HTML page's title, or its first line."""
    if "<" in text:
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        text = title.group(1) if title else re.sub(r"<[^>]*>", " ", text)
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def _error_detail(body: Any) -> Any:
    """The error object inside a body: ``body["error"]`` when there is one."""
    if isinstance(body, dict) and body.get("error") is not None:
        return body["error"]
    return body


def _error_text(body: Any) -> str:
    """The human message of an error body, whatever its shape."""
    if isinstance(body, str):  # not JSON: an HTML page or plain text
        return _text_summary(body)
    detail = _error_detail(body)
    if isinstance(detail, str):
        return detail.strip()  # a JSON message is kept as sent: "<", "</s>" and "<|eot_id|>" are text
    for source in (detail, body):
        if not isinstance(source, dict):
            continue
        for key in ("message", "detail", "msg"):
            value = source.get(key)
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = value[0].get("msg")  # a validation error list, as FastAPI sends
            if isinstance(value, str) and value.strip():
                return value.strip()
    return ""  # no message in there: the caller falls back to the reason phrase


def _request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-request-id") or headers.get("cf-ray")


def _status_phrase(status: int) -> str:
    import http

    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _status_error(response: Response) -> APIStatusError:
    """Build the typed error for an HTTP error response whose body was read."""
    body = _parse_body(response.content)
    text = _error_text(body) or response.reason_phrase
    status = response.status_code
    message = f"Error code: {status} - {text}" if text else f"Error code: {status}"
    return _error_class(status)(message, response=response, body=body)


def _stream_error(data: Any, response: Response) -> APIError:
    """The error for an error event inside a 200 stream, or an error object in a 200 answer."""
    message = _error_text(data) or "An error occurred during streaming"
    return APIError(message, response=response, body=data)


class _ProtocolError(Exception):
    """A response that breaks HTTP/1.1's rules, found by the transport; reported as an APIConnectionError."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def _connection_error(
    exc: BaseException, doing: str, where: object, request: Request | None = None
) -> APIConnectionError:
    """Translate a socket, TLS or HTTP-parsing failure into a together_lite error naming ``where`` (host:port).

    The one place such failures become the module's errors; ``request`` is attached when known.
    """
    error = _translated(exc, doing, where)
    error.request = error.request or request
    return error


def _translated(exc: BaseException, doing: str, where: object) -> APIConnectionError:
    import socket

    if isinstance(exc, APIConnectionError):
        return exc
    error: APIConnectionError
    if isinstance(exc, (socket.timeout, TimeoutError)):
        error = APITimeoutError(f"Request timed out while {doing} {where}.")
        error._reason = f"{doing} {where} timed out"
        return error
    ssl_module = sys.modules.get("ssl")
    if ssl_module is not None and isinstance(exc, ssl_module.SSLCertVerificationError):
        message = f"TLS certificate verification failed for {where}: {exc.verify_message}."
        return APIConnectionError(message, retryable=False)
    if isinstance(exc, _ProtocolError):
        error = APIConnectionError(f"Connection error while {doing} {where}: {exc.message}", retryable=exc.retryable)
        error._reason = f"{exc.message.rstrip('.')} ({where})"
        return error
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    error = APIConnectionError(f"Connection error while {doing} {where}: {detail}.")
    error._reason = _REASONS.get(type(exc), "{detail} ({doing} {where})").format(
        detail=detail, doing=doing, where=where
    )
    return error


#: How a retry note names a failure, by its kind.
_REASONS: Final[Mapping[type[BaseException], str]] = {
    ConnectionRefusedError: "connection refused by {where}",
    ConnectionResetError: "connection reset by {where}",
    BrokenPipeError: "connection closed by {where}",
}


def _error_response(response: _Response, call: _Call) -> APIStatusError:
    """The typed error for a non-2xx response, with its body read."""
    try:
        raw = response.read_error_body()
    except APIConnectionError:
        raw = b""
    response.close()
    public = response.public(call.request, raw)
    if 300 <= response.status < 400:
        return _redirect_error(response, public)
    return _status_error(public)


def _redirect_error(response: _Response, public: Response) -> APIStatusError:
    """The error for a redirect that was not followed, saying why."""
    location = response.headers.get("location", "")
    if not location:
        reason = "redirect without a Location, not followed"
    elif response.status not in _REDIRECT_STATUSES:
        reason = f"redirect to {location!r} not followed (only 307 and 308 keep the POST; nothing else is followed)"
    elif _same_origin_path(response.origin, "/", location) is not None:
        reason = f"redirect to {location!r} not followed: more than {_MAX_REDIRECTS} redirects"
    else:
        reason = f"redirect to {location!r} not followed (it leaves the base URL's origin, which must not get the key)"
    return _error_class(response.status)(
        f"Error code: {response.status} - {reason}", response=public, body=_parse_body(public.content)
    )


def _not_an_object(response: Response, payload: Any) -> APIError:
    """The error for JSON that is valid but not the object a result or chunk must be."""
    return JSONError(
        f"The API sent JSON that is not an object but a {type(payload).__name__}.", response=response, body=payload
    )


# -- Result types -------------------------------------------------------------
#
# Built straight from the JSON without validation: a field the server adds later
# is kept as an attribute and in model_dump(), a missing field reads as None, and
# strings such as finish_reason are never forced into enums. Each class declares
# its fields with their types; a field whose type is another result type (or a
# list of one) is built as one. They are not dataclasses: dataclasses.replace()
# and asdict() know only the declared fields and would drop what the server added.


class _Model:
    """Base of the result types: the declared fields, plus whatever else the server sent."""

    __slots__ = ("_request_id_slot",)  # kept out of __dict__, which holds what the server sent
    #: The declared field names, in order, the base class's first.
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    #: (field, converter) for the fields whose JSON becomes objects (or floats).
    _NESTED: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]] = ()
    #: A class's own converters, for fields its annotations cannot tell.
    _CONVERT: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        own = [name for name in vars(cls).get("__annotations__", {}) if not name.startswith("_")]
        cls._FIELDS = (*cls._FIELDS, *(name for name in own if name not in cls._FIELDS))
        convert = {name: _converter_for(cls.__annotations__[name]) for name in own}
        convert.update(vars(cls).get("_CONVERT", {}))
        nested = dict(cls._NESTED)
        nested.update((name, function) for name, function in convert.items() if function is not None)
        cls._NESTED = tuple(nested.items())

    def __init__(self, **data: Any) -> None:
        """Fields by name; names the type does not declare are kept too, as in a response."""
        self._fill(data)

    @classmethod
    def _parse(cls, data: Any) -> Any:
        """Build from decoded JSON; anything but an object is returned unchanged."""
        if type(data) is not dict:
            return data
        obj = cls.__new__(cls)
        obj._fill(data)
        return obj

    def _fill(self, data: dict[str, Any]) -> None:
        if not _RESERVED_NAMES.isdisjoint(data):  # a key that would hide a method of the type
            data = {name: value for name, value in data.items() if name not in _RESERVED_NAMES}
        attrs = self.__dict__
        attrs.update(data)
        for name, convert in type(self)._NESTED:
            value = data.get(name)
            if value is not None:
                attrs[name] = convert(value)

    def _declared(self) -> tuple[str, ...]:
        return type(self)._FIELDS

    def _items(self) -> dict[str, Any]:
        items = {name: getattr(self, name) for name in self._declared()}
        items.update(self.__dict__)
        return items

    @property
    def _request_id(self) -> str | None:
        """The ``x-request-id`` of the response this result came in (top-level results only), as openai has it."""
        return getattr(self, "_request_id_slot", None)

    @_request_id.setter
    def _request_id(self, value: str | None) -> None:
        self._request_id_slot = value

    @property
    def model_fields_set(self) -> set[str]:
        """The declared fields the server sent."""
        return {name for name in self._declared() if name in self.__dict__}

    @property
    def model_extra(self) -> dict[str, Any]:
        """The fields the server sent that this type does not declare."""
        declared = set(self._declared())
        return {name: value for name, value in self.__dict__.items() if name not in declared}

    def model_dump(
        self,
        *,
        mode: str = "python",
        include: Collection[str] | None = None,
        exclude: Collection[str] | None = None,
        by_alias: bool = False,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        round_trip: bool = False,
        warnings: Any = True,
    ) -> dict[str, Any]:
        """The object as plain JSON data (dicts, lists, strings, numbers), with pydantic's options.

        ``exclude_unset`` keeps only what the server sent, ``exclude_none`` (and
        ``exclude_defaults``, since every default is None) drops None values,
        ``include``/``exclude`` pick top-level fields by name. ``mode``,
        ``by_alias``, ``round_trip`` and ``warnings`` change nothing: the data is
        JSON already and no field has an alias.
        """
        if mode not in ("python", "json"):
            raise ValueError(f"mode must be 'python' or 'json', not {mode!r}")
        dump = _Dump(exclude_none or exclude_defaults, exclude_unset)
        data = dump.model(self)
        if include is not None:
            kept = _field_names(include, "include")
            data = {name: value for name, value in data.items() if name in kept}
        if exclude is not None:
            dropped = _field_names(exclude, "exclude")
            data = {name: value for name, value in data.items() if name not in dropped}
        return data

    def model_dump_json(self, *, indent: int | None = None, **options: Any) -> str:
        """The object as a JSON string; ``options`` are those of ``model_dump``."""
        return json.dumps(self.model_dump(**options), indent=indent, ensure_ascii=False)

    def to_dict(
        self,
        *,
        mode: str = "python",
        use_api_names: bool = True,
        exclude_unset: bool = True,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        warnings: Any = True,
    ) -> dict[str, Any]:
        """The object as JSON data, as openai and together 3.x give it: by default only what the server sent."""
        return self.model_dump(
            mode=mode, exclude_unset=exclude_unset, exclude_defaults=exclude_defaults, exclude_none=exclude_none
        )

    def to_json(
        self,
        *,
        indent: int | None = 2,
        use_api_names: bool = True,
        exclude_unset: bool = True,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        warnings: Any = True,
    ) -> str:
        """The object as a JSON string, as openai and together 3.x give it: by default only what the server sent."""
        data = self.to_dict(exclude_unset=exclude_unset, exclude_defaults=exclude_defaults, exclude_none=exclude_none)
        separators = None if indent is not None else (",", ":")
        return json.dumps(data, indent=indent, separators=separators, ensure_ascii=False)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy (``deep=True``: of everything inside too), with the fields in ``update`` replaced."""
        import copy

        duplicate = copy.deepcopy(self) if deep else copy.copy(self)
        duplicate.__dict__.update(update or {})
        return duplicate

    @classmethod
    def model_validate(cls, data: Any) -> Any:
        """Build from a dict of JSON data (as the API sends it), or return an instance unchanged."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.model_validate needs a dict, not {type(data).__name__}")
        return cls._parse(_Dump(exclude_none=False, exclude_unset=False).mapping(data))  # plain dicts inside

    @classmethod
    def model_validate_json(cls, data: str | bytes) -> Any:
        """Build from a JSON string."""
        return cls.model_validate(json.loads(data))

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """(name, value) pairs, as pydantic gives: ``dict(result)`` works."""
        return iter(self._items().items())

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._items() == other._items()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._items().items() if value is not None)
        return f"{type(self).__name__}({shown})"


#: Names a server field may not take: it would hide a method of the result types.
_RESERVED_NAMES: Final = frozenset(name for name in vars(_Model) if not name.startswith("__"))

# pydantic v1's names, which drop-in code still calls. Not reserved: a server field named
# "json" stays data (and hides the method on that one object), as pydantic would keep it.
_Model.dict = _Model.model_dump  # type: ignore[attr-defined]
_Model.json = _Model.model_dump_json  # type: ignore[attr-defined]
_Model.copy = _Model.model_copy  # type: ignore[attr-defined]


class _Dump:
    """Turns result objects, and the lists and dicts inside them, into plain JSON data."""

    def __init__(self, exclude_none: bool, exclude_unset: bool) -> None:
        self.exclude_none = exclude_none
        self.exclude_unset = exclude_unset

    def model(self, model: _Model) -> dict[str, Any]:
        items = model.__dict__ if self.exclude_unset else model._items()  # __dict__: what was sent
        return self.mapping(items)

    def mapping(self, items: Mapping[str, Any]) -> dict[str, Any]:
        return {name: self.value(value) for name, value in items.items() if not (self.exclude_none and value is None)}

    def value(self, value: Any) -> Any:
        if isinstance(value, _Model):
            return self.model(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return self.mapping(value)
        return value


def _field_names(names: Any, option: str) -> Collection[str]:
    """The top-level names of an include or exclude option: a set of names, or a dict of name: True."""
    if isinstance(names, dict):
        if not all(value is True or value is Ellipsis for value in names.values()):
            raise ValueError(f"{option} takes top-level field names; nested selections are not supported")
        return names.keys()
    return names  # type: ignore[no-any-return]


# The default of fields the API always sends, typed as sent (``response.choices[0]`` needs no
# None check in typed code); a result built from a body without them still reads None there.
_DECLARED: Final[Any] = None


def _as_float(value: Any) -> Any:
    """A JSON integer as a float (log probabilities print as 0.0, as in the SDK); anything else unchanged."""
    return float(value) if type(value) is int else value


def _floats(value: Any) -> Any:
    return [_as_float(item) for item in value] if type(value) is list else value


def _list_of(model: type[_Model]) -> Callable[[Any], Any]:
    parse = model._parse

    def convert(value: Any) -> Any:
        return [parse(item) for item in value] if type(value) is list else value

    return convert


def _converter_for(annotation: str) -> Callable[[Any], Any] | None:
    """How a field's JSON is built, read from its annotation: ``Usage``, ``list[ChatChoice] | None``, ``float``."""
    name = annotation.replace(" | None", "")
    is_list = name.startswith("list[") and name.endswith("]")
    if is_list:
        name = name[5:-1]
    if name == "float":
        return _floats if is_list else _as_float
    model = globals().get(name)
    if not (isinstance(model, type) and issubclass(model, _Model)):
        return None
    return _list_of(model) if is_list else model._parse


class FunctionCall(_Model):
    """The function a tool call invokes; ``arguments`` is a JSON string."""

    name: str = _DECLARED
    arguments: str = _DECLARED


class ToolCall(_Model):
    """One tool call made by the model."""

    id: str | None = None
    type: str | None = None
    function: FunctionCall = _DECLARED
    index: int | None = None


class Usage(_Model):
    """Token counts of a request."""

    prompt_tokens: int = _DECLARED
    completion_tokens: int = _DECLARED
    total_tokens: int = _DECLARED
    prompt_tokens_details: Any = None
    completion_tokens_details: Any = None


class Logprobs(_Model):
    """Log probabilities of the generated (or, with ``echo``, the prompt's) tokens."""

    tokens: list[str | None] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: Any = None
    token_ids: list[int | None] | None = None
    text_offset: list[int] | None = None
    content: list[Any] | None = None
    refusal: list[Any] | None = None


class PromptPart(_Model):
    """The prompt echoed back with ``echo=True``, with its log probabilities."""

    text: str | None = None
    logprobs: Logprobs | None = None


class InferenceWarning(_Model):
    """A warning the server attached to a result."""

    message: str | None = None


class ChatMessage(_Model):
    """The assistant's message in a chat completion."""

    role: str = _DECLARED
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None


class ChatChoice(_Model):
    """One choice of a chat completion."""

    index: int = _DECLARED
    message: ChatMessage = _DECLARED
    finish_reason: str | None = None
    logprobs: Logprobs | None = None
    seed: int | None = None
    text: str | None = None
    top_logprobs: Any = None


class ChatCompletionResponse(_Model):
    """The result of ``client.chat.completions.create(...)``."""

    id: str = _DECLARED
    object: str = _DECLARED
    created: int = _DECLARED
    model: str = _DECLARED
    choices: list[ChatChoice] = _DECLARED
    usage: Usage = _DECLARED
    prompt: list[PromptPart] | None = None
    warnings: list[InferenceWarning] | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


class ChatDelta(_Model):
    """The new part of the message carried by one stream chunk."""

    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    token_id: int | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None


class ChatChoiceDelta(_Model):
    """One choice of a chat stream chunk."""

    index: int = _DECLARED
    delta: ChatDelta = _DECLARED
    finish_reason: str | None = None
    logprobs: Any = None
    seed: int | None = None
    top_logprobs: Any = None

    _CONVERT = {"logprobs": _as_float}  # a number in Together's chunks, an object in openai's


class CompletionToken(_Model):
    """The token carried by one completion stream chunk."""

    id: int | None = None
    text: str | None = None
    logprob: float | None = None
    special: bool | None = None


class ChatCompletionChunk(_Model):
    """One chunk of a streamed chat completion."""

    id: str = _DECLARED
    object: str = _DECLARED
    created: int = _DECLARED
    model: str = _DECLARED
    choices: list[ChatChoiceDelta] = _DECLARED
    usage: Usage | None = None
    finish_reason: str | None = None
    token: CompletionToken | None = None
    system_fingerprint: str | None = None
    warnings: list[InferenceWarning] | None = None
    service_tier: str | None = None


class CompletionChoice(_Model):
    """One choice of a text completion."""

    index: int = _DECLARED
    text: str = _DECLARED
    finish_reason: str | None = None
    logprobs: Logprobs | None = None
    seed: int | None = None


class CompletionResponse(_Model):
    """The result of ``client.completions.create(...)``."""

    id: str = _DECLARED
    object: str = _DECLARED
    created: int = _DECLARED
    model: str = _DECLARED
    choices: list[CompletionChoice] = _DECLARED
    usage: Usage = _DECLARED
    prompt: list[PromptPart] | None = None
    warnings: list[InferenceWarning] | None = None
    system_fingerprint: str | None = None


class CompletionChoiceDelta(_Model):
    """One choice of a text completion stream chunk."""

    index: int = _DECLARED
    text: str | None = None
    finish_reason: str | None = None
    logprobs: Any = None
    seed: int | None = None
    delta: ChatDelta | None = None

    _CONVERT = {"logprobs": _as_float}  # a number in Together's chunks, an object in openai's


class CompletionChunk(_Model):
    """One chunk of a streamed text completion."""

    id: str = _DECLARED
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[CompletionChoiceDelta] = _DECLARED
    usage: Usage | None = None
    token: CompletionToken | None = None
    finish_reason: str | None = None
    seed: int | None = None
    warnings: list[InferenceWarning] | None = None


class ErrorResponse(_Model):
    """The error object of an error body, as ``exception.api_response``."""

    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: Any = None


# The names the v1 SDK uses for the same types.
ChatCompletionMessage = ChatMessage
ChatCompletionChoicesData = ChatChoice
ChatCompletionChoicesChunk = ChatChoiceDelta
DeltaContent = ChatDelta
CompletionChoicesData = CompletionChoice
CompletionChoicesChunk = CompletionChoiceDelta
UsageData = Usage
LogprobsPart = Logprobs
ToolCalls = ToolCall
TogetherErrorResponse = ErrorResponse


# The v1 SDK's constants, for comparisons such as ``finish_reason == FinishReason.StopSequence``.
# Results hold plain strings, so a value the server adds later never breaks parsing.


class FinishReason(str, Enum):
    """Why generation stopped (the v1 names)."""

    Length = "length"
    StopSequence = "stop"
    EOS = "eos"
    ToolCalls = "tool_calls"
    Error = "error"
    Null = ""


class ObjectType(str, Enum):
    """The ``object`` field of results and chunks (the v1 names)."""

    Completion = "text.completion"
    TextCompletion = "text_completion"  # what the completions endpoint sends today
    CompletionChunk = "completion.chunk"
    ChatCompletion = "chat.completion"
    ChatCompletionChunk = "chat.completion.chunk"
    Embedding = "embedding"
    FinetuneEvent = "fine-tune-event"
    File = "file"
    Model = "model"


class MessageRole(str, Enum):
    """Message roles (the v1 names); any other role string is sent too."""

    ASSISTANT = "assistant"
    SYSTEM = "system"
    USER = "user"
    TOOL = "tool"


# -- Requests -----------------------------------------------------------------
#
# Arguments are checked before anything is sent, but only for what the API can
# never accept: new roles, content parts and fields pass through untouched.


class NotGiven:
    """The modern SDKs' "not given" (``NOT_GIVEN``, ``not_given``): a parameter left at it is not sent."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


class Omit:
    """The modern SDKs' ``omit``: a parameter given as ``omit`` is not sent, an extra header so is removed."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "omit"


#: A parameter left at ``NOT_GIVEN`` (or ``not_given``) is not sent.
NOT_GIVEN: Final = NotGiven()
not_given: Final = NOT_GIVEN
#: A parameter given as ``omit`` is not sent; an extra header given as ``omit`` is removed.
omit: Final = Omit()
#: The types of the values that mean "not sent".
_ABSENT: Final = frozenset({NotGiven, Omit})

if TYPE_CHECKING:
    _Maybe = Union[_T, None, NotGiven, Omit]
    _Messages = Sequence[Union[Mapping[str, Any], "ChatMessage"]]

    class _TimeoutObject:  # what httpx.Timeout offers
        connect: float | None
        read: float | None
        write: float | None

    class _CallOptions(TypedDict, total=False):
        timeout: _Maybe[float | _TimeoutObject]
        max_retries: _Maybe[int]
        extra_headers: _Maybe[Mapping[str, Any]]
        extra_query: _Maybe[Mapping[str, Any]]
        extra_body: _Maybe[Mapping[str, Any]]

    class _CompletionParams(_CallOptions, total=False):
        """The keywords both endpoints take, as the API names them."""

        max_tokens: _Maybe[int]
        stop: _Maybe[str | Sequence[str]]
        temperature: _Maybe[float]
        top_p: _Maybe[float]
        top_k: _Maybe[int]
        repetition_penalty: _Maybe[float]
        presence_penalty: _Maybe[float]
        frequency_penalty: _Maybe[float]
        min_p: _Maybe[float]
        logit_bias: _Maybe[Mapping[str, float]]
        seed: _Maybe[int]
        logprobs: _Maybe[int | bool]
        echo: _Maybe[bool]
        n: _Maybe[int]
        safety_model: _Maybe[str]

    class _ParseParams(_CompletionParams, total=False):
        """The keywords ``chat.completions.parse()`` takes besides ``messages``, ``model`` and ``response_format``."""

        tools: _Maybe[Sequence[Mapping[str, Any]]]
        tool_choice: _Maybe[str | Mapping[str, Any]]
        reasoning_effort: _Maybe[str]
        reasoning: _Maybe[Mapping[str, Any]]
        chat_template_kwargs: _Maybe[Mapping[str, Any]]
        context_length_exceeded_behavior: _Maybe[str]
        compliance: _Maybe[str]
        function_call: _Maybe[str | Mapping[str, Any]]

    class _ChatParams(_ParseParams, total=False):
        """The keywords chat completions take besides ``messages``, ``model`` and ``stream``."""

        response_format: _Maybe[Mapping[str, Any]]


def _require_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")


def _as_int(name: str, value: Any, minimum: int) -> int | None:
    """``value`` as an int (a whole float such as 2048.0 too, as pydantic allows); None stays None."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_number(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value - value != 0:  # NaN and infinity: JSON has no such numbers
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of message dicts, not {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, (dict, _Model)):
            raise TypeError(f"messages[{index}] must be a dict, not {type(message).__name__}")


def _normalize_stop(stop: Any) -> list[str] | None:
    """``stop`` as the list the API wants: a single string becomes a list of one."""
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(item, str) for item in stop):
        return list(stop)
    raise TypeError("stop must be a str or a list of str")


def _normalize_params(params: dict[str, Any]) -> None:
    """Check the parameters both endpoints share and put them in the API's form, in place."""
    for name in _NUMBER_PARAMS.intersection(params):
        _check_number(name, params[name])
    for name in _INT_PARAMS.keys() & params.keys():
        params[name] = _as_int(name, params[name], _INT_PARAMS[name])
    logprobs = params.get("logprobs")
    if isinstance(logprobs, bool):
        if "top_logprobs" not in params:  # Together's form: logprobs=True means one per token
            params["logprobs"] = int(logprobs)
    elif logprobs is not None:
        params["logprobs"] = _as_int("logprobs", logprobs, 0)
    stream = params.get("stream", False)
    if not isinstance(stream, bool):
        raise TypeError("stream must be a bool")
    if stream is False:  # the API's default; not sent
        params["stream"] = None
    for name in _DICT_PARAMS.intersection(params):
        if params[name] is not None and not isinstance(params[name], dict):
            raise TypeError(f"{name} must be a dict, not {type(params[name]).__name__}")
    if params.get("safety_model") is not None and not isinstance(params["safety_model"], str):
        raise TypeError("safety_model must be a str")
    if "stop" in params:
        params["stop"] = _normalize_stop(params["stop"])


#: Parameters that must be finite numbers.
_NUMBER_PARAMS: Final = frozenset(
    {"temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_p"}
)
#: Parameters that must be whole numbers, and their least value.
_INT_PARAMS: Final = {"max_tokens": 0, "top_k": 0, "seed": -(2**63), "n": 1}
#: Parameters that must be objects.
_DICT_PARAMS: Final = frozenset({"logit_bias", "response_format"})


def _build_body(arguments: dict[str, Any], extra_body: Any) -> dict[str, Any]:
    """The JSON body: the arguments given, in the API's form, then ``extra_body``."""
    if not hasattr(extra_body, "items"):
        raise TypeError(f"extra_body must be a dict, not {type(extra_body).__name__}")
    _normalize_params(arguments)
    body = {name: value for name, value in arguments.items() if value is not None}
    body.update(extra_body)
    return body


def _json_default(value: Any) -> Any:
    if isinstance(value, _Model):  # lets a response message go back into the history
        return value.model_dump(exclude_none=True)
    raise TypeError(f"request body holds a {type(value).__name__}, which is not JSON serializable")


def _encode_body(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinity are refused because JSON has no such numbers."""
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError as exc:
        raise ValueError(f"request body is not valid JSON: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: let json escape them instead
        return json.dumps(body, separators=(",", ":"), allow_nan=False, default=_json_default).encode("ascii")


def _check_sendable(what: str, value: Any) -> None:
    """A header value must be a str HTTP can carry; the message names ``what``, never the value."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if re.search(_CONTROL_CHARS, value):
        raise ValueError(f"{what} contains a control character (CR, LF or similar)")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains characters that cannot be sent in an HTTP header") from None


def _merge_headers(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` updated with ``extra``; header names match whatever their case."""
    replaced = {name.lower() for name in extra}
    merged = {name: value for name, value in base.items() if name.lower() not in replaced}
    merged.update(extra)
    return merged


def _check_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not hasattr(headers, "items"):
        raise TypeError("headers must be a dict of str to str")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not re.fullmatch(_HEADER_NAME, name):
            raise ValueError(f"invalid header name {name!r}")
        _check_sendable(f"header {name!r}", value)
        checked[name] = value
    return checked


# -- Server-sent events -------------------------------------------------------
#
# An incremental parser for the WHATWG event-stream format:
# https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
# Lines end at CR, LF or CRLF (never at U+2028 and friends), so bytes are split
# before they are decoded, and only complete lines are decoded. Invalid UTF-8
# becomes U+FFFD, as the spec says.

#: A line end of an event stream: CR, LF or CRLF, and nothing else.
_LINE_BREAK: Final = r"\r\n|\r|\n"


class ServerSentEvent:
    """One dispatched event: its type, its data lines joined by LF, the last id, and retry."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, data: str, event: str | None = None, id: str | None = None, retry: int | None = None) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    def __repr__(self) -> str:
        return f"ServerSentEvent(data={self.data!r}, event={self.event!r}, id={self.id!r}, retry={self.retry!r})"


class _SSEDecoder:
    """Feed it bytes as they arrive; it returns the events they complete."""

    __slots__ = ("_data", "_event", "_last_id", "_partial", "_retry", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._partial = bytearray()  # the bytes of an unfinished line
        self._skip_lf = False  # the last line ended with CR: an LF next completes a CRLF
        self._started = False  # past the optional byte order mark
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def pending(self) -> bool:
        """Whether bytes or data lines wait for the blank line that would end their event."""
        return bool(self._partial or self._data)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Take the next bytes of the stream and return the events they complete."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if not end:
            self._partial += chunk
            return []
        if self._partial:
            complete = bytes(self._partial) + chunk[:end]
            self._partial = bytearray(chunk[end:])
        else:
            complete = chunk[:end]
            if end < len(chunk):
                self._partial += chunk[end:]
        text = complete.decode("utf-8", "replace")
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if "\r" in text:
            lines = re.split(_LINE_BREAK, text)
            # A CR that ends this read may be the first half of a CRLF; one followed by
            # the start of another line in the same read was a line end of its own.
            self._skip_lf = end == len(chunk) and text.endswith("\r")
        else:
            lines = text.split("\n")
        lines.pop()  # the text ends with a line break, so the last piece is empty
        return self._interpret(lines)

    def _interpret(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(ServerSentEvent("\n".join(data), self._event or None, self._last_id, self._retry))
                    data.clear()
                self._event = ""
                self._retry = None
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif not line.startswith(":"):
                self._field(line)
        return events

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":  # "data" without a colon: an empty data line
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the spec says.


# -- Streams ------------------------------------------------------------------
#
# One generator, _read_stream, owns a stream's whole life: it reads the body,
# decodes its events, parses its chunks, finds its end ([DONE], or a
# finish_reason before the server closes) or its cut-off, and releases or
# closes the connection in its ``finally``. Stream hands out its chunks;
# AsyncStream runs the same reads on a worker.


#: What a read returns at the end of a stream (StopIteration cannot cross into a Future).
_END: Final[Any] = object()


class Stream(_Generic[_T]):
    """The chunks of a streamed completion, as they arrive.

    Iterate over it (``for chunk in stream``). It is a context manager, and
    ``close()`` releases the connection early; reading to the end, an error,
    or the stream being garbage collected release it too. ``response`` is
    the HTTP response (``status_code``, ``headers``).
    """

    def __init__(self, response: _Response, parse: Callable[[Any], Any], request: Request | None = None) -> None:
        self._http = response
        self.response = response.public(request)
        # The generator refers to the response, never to the stream, so a dropped stream is freed
        # (and closes its socket) at once instead of waiting for the cycle collector.
        self._batches = _read_stream(response, parse, self.response)
        self._pending: Iterator[Any] = iter(())
        self._deferred: TogetherException | None = None  # an error held back behind chunks
        self._lock = threading.Lock()  # orders close() in one thread against a read in another
        self._reading = False
        self._stopped = False  # close() was called
        response.watch()  # so that close() can wake a read blocked in another thread

    @property
    def headers(self) -> dict[str, str]:
        """The response headers (names in any case: ``stream.headers["X-Request-Id"]``)."""
        return self.response.headers

    @property
    def _closed(self) -> bool:
        return self._stopped

    def __iter__(self) -> Stream[_T]:
        return self  # the loop holds the stream, so the stream stays open while it runs

    def __next__(self) -> _T:
        chunk = next(self._pending, _END)
        while chunk is _END:
            self._pending = iter(self._read() or ())  # StopIteration at the end
            chunk = next(self._pending, _END)
        return chunk  # type: ignore[no-any-return]

    def __enter__(self) -> Stream[_T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and release the connection (closed, unless the stream was complete)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._pending = iter(())  # chunks already read are not handed out any more
            reading = self._reading
            if not reading:  # under the lock, so that no read can start meanwhile
                self._batches.close()
                self._http.close()  # in case the generator never started
        if reading:  # a read is blocked in another thread: wake it; its generator then closes the connection
            self._http.abort()

    def _read(self) -> list[Any] | None:
        """The chunks of the next read of the body; StopIteration at the end, None if nothing is here yet."""
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        with self._lock:
            if self._stopped:
                raise StopIteration
            self._reading = True
        try:
            return next(self._batches)
        except APIConnectionError:
            if self._stopped:  # closed from another thread while this read waited: a stop, not a failure
                raise StopIteration from None
            raise
        finally:
            self._reading = False

    def _next_available(self) -> Any:
        """The next read's chunks, plus those of every read that would not wait (one thread hop for all).

        Returns ``_END`` at the end. AsyncStream runs this on a worker.
        """
        try:
            batch = self._read() or []
        except StopIteration:
            return _END
        try:
            while self._http.has_event():
                batch.extend(self._read() or ())
        except StopIteration:
            pass
        except TogetherException as exc:
            if not batch:
                raise
            self._deferred = exc  # the chunks before the error reach the caller first
        return batch

    def _fileno(self) -> int:
        return self._http.fileno()

    def _read_timeout(self) -> float | None:
        return self._http.read_timeout()

    def _timed_out(self) -> APIConnectionError:
        """The error a read that waited too long raises; the stream is closed."""
        import socket

        self.close()
        return _connection_error(socket.timeout(), "reading the stream from", self._http.route, self.response.request)


def _read_stream(
    response: _Response, parse: Callable[[Any], Any], public: Response
) -> Generator[list[Any] | None, None, None]:
    """A stream's whole life: the chunks of each read of the body (a list, maybe empty), to its end.

    None stands for a read that found nothing yet (only on a non-blocking response).

    Ends at ``[DONE]``, or when the server closes after a chunk with a
    finish_reason; raises at an error event and when the body stops before
    either (a cut-off answer must never pass for a whole one). The connection
    is released after a clean end and closed otherwise.
    """
    decoder = _SSEDecoder()
    finished = clean = False
    try:
        for data in response.iter_bytes():
            if not data:  # a non-blocking read found nothing yet
                yield None
                continue
            batch: list[Any] = []
            for event in decoder.feed(data):
                text = event.data
                if not text:  # an empty "data:" line, sent by some servers as a keep-alive
                    continue
                if text.startswith("[DONE]"):
                    clean = True
                    break
                try:
                    payload = _decode_event(text, public)
                except JSONError as exc:
                    error: APIError | None = exc
                else:
                    error = _event_error(event.event, payload, public)
                if error is not None:
                    if batch:
                        yield batch  # the chunks before the error still reach the caller
                    raise error
                finished = finished or _has_finish_reason(payload)
                batch.append(parse(payload))
            if batch or not clean:
                yield batch  # one list per read, possibly empty
            if clean:
                return
        if not finished:
            unended = " Its last event was never ended by a blank line." if decoder.pending else ""
            raise APIConnectionError(
                f"The stream from {response.route} ended before it was complete (no [DONE] and no finish_reason)."
                + unended
            )
        clean = True
    except APIConnectionError as exc:
        exc.request = exc.request or public.request
        raise
    finally:
        if clean:
            response.release()
        else:
            response.close()


def _decode_event(data: str, public: Response) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        message = f"The stream sent data that is not JSON: {_text_summary(data)!r}"
        raise JSONError(message, response=public, body=data) from None


def _open_stream(response: _Response, call: _Call) -> Stream[Any]:
    """A Stream over a response that should be one; an error or a JSON answer instead raises."""
    kind = response.headers.get("content-type", "").lower()
    if kind and "event-stream" not in kind:
        _json_result(response, call)  # raises for an error object or a non-JSON body
        raise APIError(
            f"Asked for a stream, but the API answered with {kind}.", response=response.public(call.request, b"")
        )
    return Stream(response, call.parse, call.request)


def _event_error(event: str | None, payload: Any, response: Response) -> APIError | None:
    """The error a stream event stands for: an error event or object, or JSON that is no chunk."""
    if event == "error" or (type(payload) is dict and payload.get("error")):
        return _stream_error(payload, response)
    if type(payload) is not dict:
        return _not_an_object(response, payload)
    return None


def _has_finish_reason(payload: dict[str, Any]) -> bool:
    if payload.get("finish_reason"):
        return True
    choices = payload.get("choices")
    if type(choices) is list:
        return any(type(choice) is dict and choice.get("finish_reason") for choice in choices)
    return False


class StreamAccumulator:
    """Adds up stream chunks into the final response.

    Content, reasoning and tool calls (whose ``arguments`` arrive in pieces) are
    joined per choice; ``finish_reason`` and ``usage`` are kept::

        accumulator = StreamAccumulator()
        for chunk in stream:
            accumulator.add(chunk)
        response = accumulator.response()   # a ChatCompletionResponse

    For text completion chunks ``response()`` gives a CompletionResponse.
    """

    def __init__(self) -> None:
        self._first: Any = None
        self._usage: Any = None
        self._choices: dict[int, dict[str, Any]] = {}
        self._is_chat = True

    def add(self, chunk: Any) -> Any:
        """Take one chunk (and return it, so this fits inside a loop)."""
        if self._first is None:
            self._first = chunk
            self._is_chat = not isinstance(chunk, CompletionChunk)
        if getattr(chunk, "usage", None) is not None:
            self._usage = chunk.usage
        for position, choice in enumerate(getattr(chunk, "choices", None) or ()):
            index = choice.index if isinstance(getattr(choice, "index", None), int) else position
            state = self._choices.setdefault(index, {"index": index, "tool_calls": {}})
            self._add_choice(state, choice, chunk)
        return chunk

    def _add_choice(self, state: dict[str, Any], choice: Any, chunk: Any) -> None:
        finish = getattr(choice, "finish_reason", None) or getattr(chunk, "finish_reason", None)
        if finish:
            state["finish_reason"] = finish
        text = getattr(choice, "text", None)
        if isinstance(text, str):
            state.setdefault("text", []).append(text)  # pieces, joined once at the end
        delta = getattr(choice, "delta", None)
        if delta is None:
            return
        if getattr(delta, "role", None):
            state["role"] = delta.role
        for name in ("content", "reasoning", "reasoning_content"):
            piece = getattr(delta, name, None)
            if isinstance(piece, str):
                state.setdefault(name, []).append(piece)
        for position, call in enumerate(getattr(delta, "tool_calls", None) or ()):
            self._add_tool_call(state["tool_calls"], position, call)

    @staticmethod
    def _add_tool_call(calls: dict[int, dict[str, Any]], position: int, call: Any) -> None:
        index = call.index if isinstance(getattr(call, "index", None), int) else position
        merged = calls.setdefault(index, {"id": None, "type": "function", "index": index, "name": [], "arguments": []})
        for name in ("id", "type"):
            if getattr(call, name, None):
                merged[name] = getattr(call, name)
        function = getattr(call, "function", None)
        if function is not None:
            for name in ("name", "arguments"):
                piece = getattr(function, name, None)
                if isinstance(piece, str):
                    merged[name].append(piece)

    def response(self) -> Any:
        """The accumulated ChatCompletionResponse (or CompletionResponse)."""
        first = self._first
        head = {name: getattr(first, name, None) for name in ("id", "created", "model")}
        usage = self._usage.model_dump() if isinstance(self._usage, _Model) else self._usage
        if not self._is_chat:
            choices = [
                {"index": i, "text": "".join(s.get("text", ())), "finish_reason": s.get("finish_reason")}
                for i, s in sorted(self._choices.items())
            ]
            return CompletionResponse._parse({**head, "object": "text.completion", "choices": choices, "usage": usage})
        return ChatCompletionResponse._parse(
            {
                **head,
                "object": "chat.completion",
                "choices": [self._chat_choice(state) for _, state in sorted(self._choices.items())],
                "usage": usage,
            }
        )

    @staticmethod
    def _chat_choice(state: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": state.get("role", "assistant"), "content": None}
        for name in ("content", "reasoning", "reasoning_content"):
            if name in state:
                message[name] = "".join(state[name])
        if state["tool_calls"]:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": call["type"],
                    "index": call["index"],
                    "function": {"name": "".join(call["name"]), "arguments": "".join(call["arguments"])},
                }
                for _, call in sorted(state["tool_calls"].items())
            ]
        return {"index": state["index"], "message": message, "finish_reason": state.get("finish_reason")}


# -- Transport: URLs, TLS, proxies, cancelling ---------------------------------
#
# urllib is kept for what it does well: finding the proxy the environment asks
# for. Everything else is the small HTTP/1.1 client below.

#: The environment variables that name a trust store, in the order they count.
_CA_VARIABLES: Final = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_ssl_contexts: dict[tuple[str | None, ...], ssl.SSLContext] = {}
_ssl_lock = threading.Lock()


def _default_ssl_context() -> ssl.SSLContext:
    """Verification on, against the system's trust store or the CA bundle the environment names.

    SSL_CERT_FILE and SSL_CERT_DIR replace the system's store, as OpenSSL reads
    them; when neither is set, REQUESTS_CA_BUNDLE or else CURL_CA_BUNDLE does,
    as requests (and so together 1.x) and curl read them.
    """
    key = tuple(os.environ.get(name) or None for name in _CA_VARIABLES)
    with _ssl_lock:
        context = _ssl_contexts.get(key)
        if context is None:
            context = _ssl_contexts[key] = _new_ssl_context(key)
        return context


def _new_ssl_context(variables: tuple[str | None, ...]) -> ssl.SSLContext:
    import ssl

    cert_file, cert_dir, requests_bundle, curl_bundle = variables
    bundle = None if cert_file or cert_dir else requests_bundle or curl_bundle
    if bundle is None:
        return ssl.create_default_context()
    name = "REQUESTS_CA_BUNDLE" if bundle == requests_bundle else "CURL_CA_BUNDLE"
    try:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ValueError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise APIConnectionError(
            f"The CA bundle {name}={bundle!r} cannot be loaded: {detail}.", retryable=False
        ) from None


if TYPE_CHECKING:

    class _Origin(NamedTuple):
        scheme: str
        host: str
        port: int

else:
    _Origin = collections.namedtuple("_Origin", "scheme host port")  # typing.NamedTuple would import typing
_Origin.__doc__ = "Where requests go: scheme, host and port (with the default port written out)."


def _parse_url(url: str, what: str) -> tuple[str, str, int, str, str]:
    """Split an http(s) URL into scheme, host, port, path and query; anything else is refused."""
    import urllib.parse

    if not isinstance(url, str):
        raise TypeError(f"{what} must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://, got {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{what} has an invalid port: {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"{what} has no host: {url!r}")
    host = parts.hostname
    if not host.isascii():  # an international domain name goes on the wire as punycode
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{what} has a host name that cannot be encoded: {url!r}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not contain a user name or password")
    if parts.fragment:
        raise ValueError(f"{what} must not have a fragment: {url!r}")
    return scheme, host, port, parts.path, parts.query


class _Proxy:
    """Where to send requests for an origin instead of the origin itself."""

    __slots__ = ("headers", "host", "port")

    def __init__(self, url: str, *, from_environment: bool) -> None:
        import urllib.parse

        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or 80
            problem = "" if parts.hostname else "has no host"
        except ValueError:
            problem = "has an invalid port"
        if parts.scheme.lower() != "http":
            problem = f"uses the scheme {parts.scheme!r}; only http:// proxies are supported"
        if problem:
            if from_environment:  # found at call time: a failed call, not a bad argument
                raise APIConnectionError(f"The proxy from the environment {problem}.", retryable=False)
            raise ValueError(f"proxy {problem}")
        self.host = parts.hostname or ""
        self.port = port
        self.headers: dict[str, str] = {}
        if parts.username is not None:
            import base64

            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self.headers["Proxy-Authorization"] = f"Basic {token}"


def _proxy_variables_set() -> bool:
    """Whether any proxy variable but NO_PROXY is set (elsewhere than macOS and Windows, the only source)."""
    return any(name.lower().endswith("_proxy") and name.lower() != "no_proxy" for name in os.environ)


def _environment_proxy(scheme: str, host: str, port: int) -> _Proxy | None:
    """The proxy that HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY choose, read the way urllib reads them.

    NO_PROXY also takes networks (``10.0.0.0/8``), as requests and curl do; urllib does not.
    """
    if sys.platform not in ("darwin", "win32") and not _proxy_variables_set():
        return None  # nothing to find, and importing urllib.request would cost a cold start ~15 ms
    import urllib.request

    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or _no_proxy_matches(proxies.get("no", ""), host, port):
        return None
    if urllib.request.proxy_bypass(f"{host}:{port}"):  # also the system's settings on macOS and Windows
        return None
    return _Proxy(url, from_environment=True)


def _no_proxy_matches(no_proxy: str, host: str, port: int) -> bool:
    """Whether a NO_PROXY list exempts host:port: ``*``, a domain and its subdomains, an address or a network."""
    import ipaddress

    try:
        address: Any = ipaddress.ip_address(host)
    except ValueError:
        address = None
    host = host.lower().rstrip(".")
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return True
        if entry and _no_proxy_entry_matches(entry, host, port, address):
            return True
    return False


def _no_proxy_entry_matches(entry: str, host: str, port: int, address: Any) -> bool:
    entry_port = ""
    if entry.startswith("["):  # [::1] or [::1]:8080
        entry, _, rest = entry[1:].partition("]")
        entry_port = rest[1:]
    elif entry.count(":") == 1:  # name:port or address:port (a bare IPv6 address has more colons)
        entry, entry_port = entry.split(":")
    if entry_port and entry_port != str(port):
        return False
    if address is not None:
        import ipaddress

        try:
            return address in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    name = entry.lstrip("*.").rstrip(".")  # ".example.com" and "*.example.com" mean the domain and below
    return bool(name) and (host == name or host.endswith("." + name))


class _Cancel:
    """Lets another thread abandon a request: its socket is shut down and no retry follows.

    Shutting a socket down wakes a thread blocked on it, in connect(), the TLS
    handshake or a read. Only the socket the request is using right now is
    touched: once its response is released it is detached, so a late cancel
    never reaches a connection that went back to the pool. The thread that
    owns the socket closes it.
    """

    __slots__ = ("_event", "_lock", "_sock", "cancelled")

    def __init__(self) -> None:
        self.cancelled = False
        self._event: threading.Event | None = None  # made only if a retry has to wait
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket) -> None:
        """The socket the request uses now; raises if the request was cancelled already."""
        with self._lock:
            if not self.cancelled:
                self._sock = sock
                return
        raise _cancelled_error()

    def attach(self, connection: _Connection) -> None:
        try:
            self.watch(connection.sock)
        except APIConnectionError:
            connection.close()
            raise

    def detach(self, connection: _Connection) -> bool:
        """The request is done with ``connection``; False if a cancel shut it."""
        with self._lock:
            if self._sock is connection.sock:
                self._sock = None
            return not self.cancelled

    def cancel(self) -> None:
        import contextlib
        import socket

        with self._lock:
            self.cancelled = True
            sock, self._sock = self._sock, None
            event = self._event
        if event is not None:
            event.set()
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def wait(self, seconds: float) -> None:
        """Sleep, waking early if the request is cancelled."""
        self._event = threading.Event()
        if not self.cancelled:  # checked after the event exists, so a cancel() cannot slip between
            self._event.wait(seconds)


def _cancelled_error() -> APIConnectionError:
    return APIConnectionError("The request was cancelled.", retryable=False)


# -- Transport: HTTP/1.1 messages ---------------------------------------------
#
# A small HTTP/1.1 client on plain sockets: each request goes out in one write
# and responses are read through a C-buffered reader. http.client would parse
# every response's headers with the email package and send each request in two
# writes; on the per-call path that is most of the cost.


class _SocketReader(io.RawIOBase):
    """The raw side of a connection's buffered reader: socket reads, counted."""

    def __init__(self, sock: socket.socket) -> None:
        self._recv_into = sock.recv_into
        self.received = 0  # bytes taken from the socket so far

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count: int = self._recv_into(buffer)
        self.received += count
        return count

    def tell(self) -> int:
        return self.received  # so that the buffered reader's tell() says how much of it was consumed


class _Connection:
    """One HTTP/1.1 connection: a socket and a buffered reader over it."""

    __slots__ = ("raw", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = _SocketReader(sock)
        self.reader = io.BufferedReader(self.raw)  # read1() goes straight to the socket when its buffer is empty

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> int:
        """Send what the socket takes of ``data`` at once (all of a usual request); how much that was."""
        return self.sock.send(data if len(data) <= _SEND_SIZE else memoryview(data)[:_SEND_SIZE])

    def send_rest(self, data: bytes, sent: int, timeouts: _Timeouts) -> _Steps[None]:
        """Send the rest of ``data`` in pieces; the write timeout bounds each wait for room, not the whole.

        (``sendall`` would apply the timeout to the whole upload, and a TLS socket
        to each call.) Each wait is a step.
        """
        sock = self.sock
        view = memoryview(data)
        sock.setblocking(False)
        try:
            while sent < len(data):
                # Only when the socket says it is writable, as a blocking send checks: filling the
                # kernel's buffer to the brim would make the next wait one for a third of it to drain.
                if not _poll(sock, True, 0.0):
                    yield _Wait(sock, timeouts.write, writable=True)
                try:
                    sent += sock.send(view[sent : sent + _SEND_SIZE])
                except OSError as exc:
                    if not _would_block(exc):
                        raise
        finally:
            sock.settimeout(timeouts.read)

    def unread(self) -> int:
        """How many received bytes no one has read yet."""
        return self.raw.received - self.reader.tell()

    def peek_now(self) -> bytes:
        """The bytes a read would get without waiting (from the buffer, or else one non-blocking read)."""
        import contextlib

        sock = self.sock
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)  # peek() reads the socket only when its buffer is empty: do not wait
            return self.reader.peek(1)
        except (OSError, ValueError):
            return b""
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)

    def is_dropped(self) -> bool:
        """Whether an idle connection is unusable: the server closed it, or sent bytes no one asked for."""
        import select

        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(0))
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True


def _read_head(reader: Any) -> tuple[str, int, str, dict[str, str]]:
    """The status line and headers of a response, past any interim 1xx responses."""
    while True:
        line = reader.readline(_MAX_LINE + 1)
        if not line:
            raise _ProtocolError("the server closed the connection without sending a response.")
        version, status, reason = _parse_status_line(line)
        headers = _read_headers(reader)
        if status >= 200:
            return version, status, reason, headers


def _parse_status_line(line: bytes) -> tuple[str, int, str]:
    if len(line) > _MAX_LINE:
        raise _ProtocolError(f"the server sent a status line longer than {_MAX_LINE} bytes.")
    text = line.decode("latin-1").rstrip("\r\n")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not (code.isascii() and code.isdigit()) or code < "100":
        raise _ProtocolError(f"the server sent something that is not an HTTP response: {text[:80]!r}")
    return version, int(code), reason.strip()


def _read_headers(reader: Any) -> dict[str, str]:
    """Header lines up to the blank line, names in lower case; repeated headers are joined with commas."""
    headers: dict[str, str] = {}
    name = ""
    for _ in range(_MAX_HEADERS + 1):
        line = reader.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise _ProtocolError(f"the server sent a header line longer than {_MAX_LINE} bytes.")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise _ProtocolError("the connection closed in the middle of the response headers.")
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):  # obsolete line folding continues the previous header
            if name:
                headers[name] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            name = ""  # not a header line; ignored, as http.client does
            continue
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise _ProtocolError(f"the server sent more than {_MAX_HEADERS} headers.")


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    values = {item.strip() for item in value.split(",")}
    if len(values) != 1 or not all(item.isascii() and item.isdigit() for item in values):
        raise _ProtocolError(f"the server sent an invalid Content-Length: {value!r}")
    return int(values.pop())


def _keeps_alive(version: str, headers: Mapping[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if "close" in tokens:
        return False
    return version != "HTTP/1.0" or "keep-alive" in tokens


def _codings(value: str) -> list[str]:
    return [coding for coding in (item.strip().lower() for item in value.split(",")) if coding]


class _Decoder:
    """Undoes the compression a body arrived in: transfer codings (``gzip, chunked``), then content codings.

    ``codings`` are in the order the server applied them. gzip may come as
    several members one after another, as RFC 1952 allows.
    """

    def __init__(self, codings: list[str]) -> None:
        self._codings = codings[::-1]  # undone in the reverse order
        self._stages: list[Any] = [None] * len(codings)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        """The decoded bytes ``data`` gives (at most about ``max_length`` of them, if not 0)."""
        for position in range(len(self._stages)):
            data = self._decompress_stage(position, data, max_length)
        return data

    def flush(self) -> bytes:
        """The last decoded bytes, at the end of the body; raises if the compressed data was cut off."""
        data = b""
        for position, coding in enumerate(self._codings):
            data = self._decompress_stage(position, data, 0)
            stage = self._stages[position]
            if stage is not None:
                data += stage.flush()
                if not stage.eof:
                    raise _ProtocolError(f"the {coding} data of the body ended before it was complete.")
        return data

    def _decompress_stage(self, position: int, data: bytes, max_length: int) -> bytes:
        stage = self._stages[position]
        if stage is None:
            if not data:
                return b""
            stage = self._stages[position] = _decompressobj(self._codings[position])
        output: bytes = stage.decompress(data, max_length)
        while stage.eof and stage.unused_data[:2] == b"\x1f\x8b" and not (max_length and len(output) >= max_length):
            rest = stage.unused_data  # another gzip member; anything else after the end is padding, ignored
            stage = self._stages[position] = _decompressobj(self._codings[position])
            output += stage.decompress(rest, max_length and max_length - len(output))
        return output


def _decompressobj(coding: str) -> Any:
    import zlib

    return zlib.decompressobj(zlib.MAX_WBITS if coding == "deflate" else 16 + zlib.MAX_WBITS)


def _transfer_codings(headers: Mapping[str, str]) -> list[str]:
    value = headers.get("transfer-encoding")
    if value is None or value == "chunked":  # the usual cases, at once
        return [] if value is None else ["chunked"]
    return [coding for coding in _codings(value) if coding != "identity"]


def _decoder(headers: Mapping[str, str], transfer_codings: list[str]) -> _Decoder | None:
    """The decoder a response's body needs, or None when it arrives as it is."""
    if not transfer_codings and "content-encoding" not in headers:
        return None
    content_codings = [coding for coding in _codings(headers.get("content-encoding", "")) if coding != "identity"]
    for name, codings in (("transfer-encoding", transfer_codings), ("content-encoding", content_codings)):
        if not _SUPPORTED_CODINGS.issuperset(codings):
            header = f"{name.title()} {headers[name]!r}"
            raise _ProtocolError(f"the server sent a body with {header}, which is not supported.", retryable=False)
    codings = content_codings + transfer_codings
    return _Decoder(codings) if codings else None


class _ChunkedBody:
    """Chunked transfer coding, undone as bytes arrive: ``feed()`` gives the body's bytes among them.

    It takes any split of the bytes (a chunk's size line may come in two reads),
    so a read never needs more than what the socket has.
    """

    def __init__(self) -> None:
        self.state = "size"  # then "data", "end of data", ..., "trailer", "done"
        self.left = 0  # bytes left in the current chunk's data
        self.line = b""  # a line begun in an earlier read
        self.extra = b""  # bytes after the body, an answer to nothing
        self._trailers = 0

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, data: bytes) -> bytes:
        """The body's bytes in ``data``, framing taken out."""
        pieces = []
        position, end = 0, len(data)
        while position < end:
            if self.state == "data":
                taken = min(self.left, end - position)
                pieces.append(data[position : position + taken])
                position += taken
                self.left -= taken
                if not self.left:
                    self.state = "end of data"
                continue
            if self.state == "done":
                self.extra = data[position:]
                break
            newline = data.find(b"\n", position)
            if newline < 0:
                self._begin_line(data[position:])
                break
            line, self.line = self.line + data[position : newline + 1], b""
            position = newline + 1
            self._take_line(line)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _begin_line(self, part: bytes) -> None:
        self.line += part
        if len(self.line) > _MAX_LINE:
            raise _ProtocolError(f"the server sent a chunked body with a line longer than {_MAX_LINE} bytes.")

    def _take_line(self, line: bytes) -> None:
        if self.state == "size":
            size = line.split(b";", 1)[0].strip()
            if not size or size.strip(b"0123456789abcdefABCDEF"):
                raise _ProtocolError(f"the server sent a malformed chunked body (chunk size {line[:40]!r}).")
            self.left = int(size, 16)
            self.state = "data" if self.left else "trailer"
        elif self.state == "end of data":
            if line not in (b"\r\n", b"\n"):
                raise _ProtocolError("the server sent a malformed chunked body (no line end after a chunk).")
            self.state = "size"
        elif line in (b"\r\n", b"\n"):  # the blank line that ends the trailer section
            self.state = "done"
        else:
            self._trailers += 1
            if self._trailers > _MAX_HEADERS:
                raise _ProtocolError(f"the server sent more than {_MAX_HEADERS} trailer lines.")

    def missing(self) -> int:
        """How many more bytes at least the body needed, had it not been cut off."""
        if self.state == "data":
            return self.left
        return 2 if self.state == "end of data" else 1


def _ends_an_event(data: bytes) -> bool:
    """Whether these next bytes of an event stream hold a blank line, the end of an event."""
    return b"\n\n" in data or b"\r\n\r\n" in data or b"\r\r" in data


def _would_block(exc: OSError) -> bool:
    """Whether a failed non-blocking read only means "nothing yet" (plain sockets, and TLS ones)."""
    return isinstance(exc, BlockingIOError) or type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")


class _Response:
    """A response from the transport: status, headers, and a body to read once.

    The body is framed by chunked encoding, by Content-Length, or by the
    server closing the connection; only a body read to its end, with nothing
    after it, lets the connection go back to the pool.
    """

    def __init__(
        self,
        connection: _Connection,
        head: tuple[str, int, str, dict[str, str]],
        route: _Route,
        done: Callable[[_Route, _Connection, bool], None],
        cancel: _Cancel | None = None,
        *,
        reusable: bool = True,
    ) -> None:
        version, status, reason, headers = head
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.route = route
        self._connection = connection
        self._reader = connection.reader
        self._done = done  # the transport's: it decides what becomes of the connection
        self._cancel = cancel
        transfer = _transfer_codings(headers)
        self._chunked = bool(transfer) and transfer[-1] == "chunked"
        if self._chunked:
            transfer.pop()
        if status in (204, 304):
            self._remaining: int | None = 0
        elif transfer or self._chunked or "transfer-encoding" in headers:
            self._remaining = None  # Content-Length does not count when Transfer-Encoding is there
        else:
            self._remaining = _content_length(headers)
        framed = self._chunked or self._remaining is not None
        self._keep_alive = reusable and framed and _keeps_alive(version, headers)
        self._chunks = _ChunkedBody() if self._chunked else None
        self._nonblocking = False  # a read that would wait returns None instead (AsyncStream's reads)
        self._received = 0
        self._eof = self._remaining == 0
        self._finished = False
        self._content: bytes | None = None
        self._decoder = _decoder(headers, transfer)

    @property
    def origin(self) -> _Origin:
        return self.route.origin

    @property
    def content(self) -> bytes | None:
        """The body, if it was read whole."""
        return self._content

    @property
    def finished(self) -> bool:
        """Whether the connection was released or closed."""
        return self._finished

    def fileno(self) -> int:
        return self._connection.sock.fileno()

    def read_timeout(self) -> float | None:
        return self._connection.sock.gettimeout()

    def public(self, request: Request | None, content: bytes | None = None) -> Response:
        """This response as errors, streams and raw responses show it."""
        return Response(
            self.status,
            self.headers,
            content=content,
            request=request,
            reason_phrase=self.reason,
            http_version=self.version,
        )

    def read(self) -> bytes:
        """The whole body, read once and kept; the connection is then released."""
        if self._content is None:
            self._content = self._read_decoded(None)
        return self._content

    def read_error_body(self) -> bytes:
        """The first bytes of an error's body, enough for its message; the rest is not read."""
        return self._read_decoded(_MAX_ERROR_BODY)

    def _read_decoded(self, limit: int | None) -> bytes:
        try:
            data = self._read_body(limit)
            if self._decoder is not None:
                data = self._decoder.decompress(data, limit or 0)
                if limit is None:
                    data += self._decoder.flush()
        except Exception as exc:
            self.close()
            raise _connection_error(exc, "reading the response from", self.route) from exc
        self.release()
        return data

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as it arrives, each piece as soon as the server sends it.

        A non-blocking response gives b"" when nothing new has arrived; the body then goes on.
        """
        while True:
            try:
                data = self._next_piece()
            except Exception as exc:
                raise _connection_error(exc, "reading the stream from", self.route) from exc
            if data is None:
                yield b""
            elif data:
                yield data
            else:
                return

    def _next_piece(self) -> bytes | None:
        """The next decoded bytes of the body; b"" at its end, None if a non-blocking read would wait."""
        decoder = self._decoder
        while True:
            data = self._read1(_READ_SIZE)
            if decoder is None or data is None:
                return data
            data = decoder.decompress(data) if data else decoder.flush()
            if data or self._eof:
                return data

    def _read_body(self, limit: int | None) -> bytes:
        remaining = self._remaining
        if remaining is not None and remaining <= min(limit or _SINGLE_READ, _SINGLE_READ) and not self._chunked:
            data = self._reader.read(remaining)  # the common case: one call for a whole JSON body
            self._received += len(data)
            if len(data) < remaining:
                raise self._incomplete(remaining - len(data))
            self._remaining, self._eof = 0, True
            return data
        parts = []
        size = 0
        while limit is None or size < limit:
            piece = self._read1(_READ_SIZE if limit is None else min(_READ_SIZE, limit - size))
            if not piece:  # the end (never None: whole bodies are read blocking)
                break
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)

    def _read1(self, size: int) -> bytes | None:
        """Some bytes of the body, as few reads of the socket as give any; b"" at its end.

        None when the connection is non-blocking and a read would wait.
        """
        while not self._eof:
            remaining = self._remaining
            try:
                data = self._reader.read1(size if remaining is None else min(size, remaining))
            except OSError as exc:
                if self._nonblocking and _would_block(exc):
                    return None
                raise
            body = self._take(data)
            if body:
                return body
        return b""

    def _take(self, data: bytes) -> bytes:
        """The body's bytes in what one read gave; marks the end of the body, or raises if it was cut off."""
        self._received += len(data)
        chunks = self._chunks
        if chunks is not None:
            if not data:
                raise self._incomplete(chunks.missing())
            body = chunks.feed(data)
            self._eof = chunks.done
            return body
        remaining = self._remaining
        if remaining is None:  # the body ends when the server closes the connection
            self._eof = not data
            return data
        if not data:
            raise self._incomplete(remaining)
        self._remaining = remaining = remaining - len(data)
        self._eof = not remaining
        return data

    def set_nonblocking(self) -> None:
        """From now on a read that would wait returns None (timeouts are then the caller's)."""
        self._nonblocking = True
        self._connection.sock.settimeout(0.0)

    def _incomplete(self, missing: int) -> _ProtocolError:
        return _ProtocolError(
            f"the connection closed in the middle of the body: got {self._received} bytes, expected {missing} more."
        )

    def has_event(self) -> bool:
        """Whether a whole event is already here, so reading on to it cannot wait for the server.

        A blank line in the buffered bytes means everything before it, chunk
        framing included, has arrived. A compressed body cannot be judged.
        """
        if self._finished or self._eof or self._decoder is not None:
            return False
        return _ends_an_event(self._connection.peek_now())

    def release(self) -> None:
        """Done with the body: the connection may be reused if the body was read to its end, else it is closed."""
        if self._finished:
            return
        complete = self._eof or (self._keep_alive and self._drain())
        self._finished = True
        # Bytes after a complete response are no answer to anything (RFC 9112 section 6.3):
        # a connection that has them is closed, or the next request would read them.
        leftover = self._connection.unread() or (self._chunks is not None and self._chunks.extra)
        reusable = complete and self._keep_alive and not leftover
        if self._cancel is not None and not self._cancel.detach(self._connection):
            reusable = False  # a cancel shut it down
        self._done(self.route, self._connection, reusable)

    def _drain(self) -> bool:
        """Read a short tail (a chunked stream's last empty chunk); whether the body ended.

        A non-blocking response takes only the tail already here: it never waits.
        """
        try:
            if not self._nonblocking:
                self._connection.sock.settimeout(_DRAIN_SECONDS)
            drained = 0
            while not self._eof and drained <= _DRAIN_BYTES:
                piece = self._read1(_READ_SIZE)
                if piece is None:
                    return False
                drained += len(piece)
        except Exception:
            return False
        return self._eof

    def close(self) -> None:
        """Stop reading; the connection is closed, never reused."""
        if self._finished:
            return
        self._finished = True
        if self._cancel is not None:
            self._cancel.detach(self._connection)
        self._done(self.route, self._connection, False)

    def watch(self) -> None:
        """Make ``abort()`` possible: a cancel handle that forgets the connection once it is released."""
        if self._cancel is None:
            self._cancel = _Cancel()
            self._cancel.attach(self._connection)

    def abort(self) -> None:
        """From another thread: unblock a read in progress and end the connection (unless already released)."""
        if self._cancel is not None:
            self._cancel.cancel()


# -- Transport: the connection pool and the seam ------------------------------


class _Route:
    """Where the requests for an origin go: straight there, or through a proxy."""

    __slots__ = ("origin", "proxy")

    def __init__(self, origin: _Origin, proxy: _Proxy | None) -> None:
        self.origin = origin
        self.proxy = proxy

    def __str__(self) -> str:
        _, host, port = self.origin
        where = _host_port(host, port, 0)
        if self.proxy is None:
            return where
        return f"{where} through the proxy {_host_port(self.proxy.host, self.proxy.port, 0)}"


def _open_socket(address: tuple[str, int], timeout: float | None, cancel: _Cancel | None) -> _Steps[socket.socket]:
    """socket.create_connection, as steps: each address is tried with a non-blocking connect and a wait.

    Each socket is watched by ``cancel`` before it connects.
    """
    import errno
    import socket

    host, port = address
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in _addresses(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if cancel is not None:
                cancel.watch(sock)
            code = sock.connect_ex(sockaddr)
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                yield _Wait(sock, timeout, writable=True)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.settimeout(timeout)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
        if cancel is not None and cancel.cancelled:
            break
    raise error if error is not None else OSError(f"no address found for {host}")


def _addresses(host: str, port: int) -> list[Any]:
    """The addresses of host:port, looked up at most once every few seconds.

    A burst of new connections to one host then makes one lookup, not one each
    (aiohttp keeps them 10 s too).
    """
    import socket

    now = time.monotonic()
    cached = _looked_up.get((host, port))
    if cached is not None and cached[0] > now:
        return cached[1]
    addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if len(_looked_up) >= _LOOKUPS_KEPT:
        _looked_up.clear()
    _looked_up[(host, port)] = (now + _LOOKUP_SECONDS, addresses)
    return addresses


#: Seconds the addresses of a host are reused before it is looked up again.
_LOOKUP_SECONDS: Final = 10.0

#: How many hosts' addresses are kept at most.
_LOOKUPS_KEPT: Final = 256

_looked_up: dict[tuple[str, int], tuple[float, list[Any]]] = {}


def _open_tunnel(
    sock: socket.socket, host: str, port: int, proxy_headers: Mapping[str, str], timeout: float | None
) -> _Steps[None]:
    """Ask an HTTP proxy for a CONNECT tunnel to host:port over ``sock``."""
    target = _host_port(host, port, 0)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", *(f"{k}: {v}" for k, v in proxy_headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    yield _Wait(sock, timeout, polled=False)  # the read below waits by itself
    reader = sock.makefile("rb", buffering=0)  # unbuffered: nothing of the TLS handshake may be read here
    try:
        _, status, reason, _ = _read_head(reader)
    finally:
        reader.close()
    if status != 200:
        raise _ProtocolError(f"the proxy refused the tunnel: {status} {reason}".rstrip(), retryable=status != 407)


def _handshake(sock: ssl.SSLSocket, timeout: float | None) -> _Steps[None]:
    """The TLS handshake, as steps: each wait for the server is a step."""
    import ssl

    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            yield _Wait(sock, timeout)
        except ssl.SSLWantWriteError:
            yield _Wait(sock, timeout, writable=True)
        else:
            return


class _ConnectionPool:
    """Kept-alive connections, per origin: thread-safe, bounded, one request per connection at a time."""

    def __init__(self, *, proxy: str | None, ssl_context: ssl.SSLContext | None) -> None:
        self._explicit_proxy = _Proxy(proxy, from_environment=False) if proxy else None
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[tuple[_Connection, float]]] = {}
        self._routes: dict[_Origin, _Route] = {}
        self._lock = threading.Lock()
        self._closed = False
        # A client dropped without close() still closes its idle sockets. A finalizer, unlike
        # __del__, runs before the cycle collector finalizes the sockets (which would warn).
        self._close_idle = weakref.finalize(self, _close_idle_connections, self._idle, self._lock)

    def route(self, origin: _Origin) -> _Route:
        """The way to the origin: the explicit proxy, else the one the environment chooses, else direct."""
        route = self._routes.get(origin)
        if route is None:
            proxy = self._explicit_proxy if self._explicit_proxy is not None else _environment_proxy(*origin)
            route = self._routes[origin] = _Route(origin, proxy)
        return route

    def get_idle(self, origin: _Origin, timeouts: _Timeouts) -> _Connection | None:
        """A kept-alive connection to the origin that still looks usable, if there is one."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                connection, since = idle.pop()
            if now - since > _POOL_IDLE_SECONDS or connection.is_dropped():
                connection.close()
                continue
            if connection.sock.gettimeout() != timeouts.read:
                connection.sock.settimeout(timeouts.read)
            return connection

    def put(self, origin: _Origin, connection: _Connection) -> None:
        now = time.monotonic()
        to_close = []
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            while idle and now - idle[0][1] > _POOL_IDLE_SECONDS:  # the oldest come first
                to_close.append(idle.pop(0)[0])
            if not self._closed and len(idle) < _POOL_MAXSIZE:
                idle.append((connection, now))
            else:
                to_close.append(connection)
        for stale in to_close:
            stale.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True  # from now on put() closes what it is given
        self._close_idle()

    def connect(self, route: _Route, timeouts: _Timeouts, cancel: _Cancel | None) -> _Steps[_Connection]:
        """A new connection: TCP, through the proxy if any, then TLS for https; each wait a step."""
        import socket

        scheme, host, port = route.origin
        proxy = route.proxy
        address = (proxy.host, proxy.port) if proxy else (host, port)
        sock = yield from _open_socket(address, timeouts.connect, cancel)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if proxy is not None:
                    yield from _open_tunnel(sock, host, port, proxy.headers, timeouts.connect)
                context = self._ssl_context or _default_ssl_context()
                sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                if cancel is not None:
                    cancel.watch(sock)  # the TLS socket took over the descriptor
                yield from _handshake(sock, timeouts.connect)
            sock.settimeout(timeouts.read)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)


def _close_idle_connections(idle: dict[_Origin, list[tuple[_Connection, float]]], lock: threading.Lock) -> None:
    with lock:
        connections = [connection for kept in idle.values() for connection, _ in kept]
        idle.clear()
    for connection in connections:
        connection.close()


#: A peer that closed its end: an idle connection it dropped, or an early answer and a hang-up.
_PEER_CLOSED: Final = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Wait:
    """A step of a call: it waits until ``sock`` has bytes (or room to write), up to ``timeout`` seconds.

    ``polled`` is False when the blocking call that follows waits by itself
    (a read with the socket's timeout), so a blocking runner skips the wait.
    """

    __slots__ = ("polled", "sock", "timeout", "writable")

    def __init__(
        self, sock: socket.socket, timeout: float | None, *, writable: bool = False, polled: bool = True
    ) -> None:
        self.sock = sock
        self.timeout = timeout
        self.writable = writable
        self.polled = polled


class _Pause:
    """A step of a call: it waits ``seconds`` before trying again."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


if TYPE_CHECKING:
    _Steps = Generator[Union[_Wait, _Pause], None, _T]


def _run_steps(
    steps: _Steps[_T],
    sleep: Callable[[float, _Cancel | None], None],
    cancel: _Cancel | None,
    step: _Wait | _Pause | None = None,
) -> _T:
    """Run a call's steps in this thread (from ``step``, if they are at one already).

    A wait for bytes is the blocking read that follows it; a pause sleeps.
    (AsyncTogether runs the same steps itself: it waits on the event loop, and
    hands each stretch between waits to a worker.)
    """
    try:
        if step is None:
            step = next(steps)
        while True:
            if isinstance(step, _Pause):
                sleep(step.seconds, cancel)
                if cancel is not None and cancel.cancelled:
                    steps.close()
                    raise _cancelled_error()
            elif step.polled and not _poll(step.sock, step.writable, step.timeout):
                step = steps.throw(_timeout_error())
                continue
            step = next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _poll(sock: socket.socket, writable: bool, timeout: float | None) -> bool:
    """Wait until ``sock`` can be read (or written); False after ``timeout`` seconds."""
    import select

    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if writable else select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))
    ready = select.select([] if writable else [sock], [sock] if writable else [], [sock], timeout)
    return any(ready)


def _timeout_error() -> OSError:
    import socket

    return socket.timeout("timed out")


class _StaleConnection(Exception):
    """A reused connection the server had closed: it never saw the request, which can go again."""


class _Transport:
    """The one seam all HTTP goes through: send a request, get a status, headers and a body."""

    def __init__(self, *, proxy: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.pool = _ConnectionPool(proxy=proxy, ssl_context=ssl_context)
        self._heads: dict[tuple[_Route, str, int], tuple[Mapping[str, str], bytes]] = {}

    def send(
        self,
        origin: _Origin,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: _Timeouts,
        cancel: _Cancel | None = None,
    ) -> _Steps[_Response]:
        """POST ``body``; follows same-origin 307/308 redirects and nothing else.

        A generator: it yields a ``_Readable`` step before each wait for the
        server's answer, and returns the response (see ``_run_steps``).
        """
        for _ in range(_MAX_REDIRECTS):
            response = yield from self._send_once(origin, path, headers, body, timeouts, cancel)
            location = response.headers.get("location")
            if response.status not in _REDIRECT_STATUSES or not location:
                return response
            target = _same_origin_path(origin, path, location)
            if target is None:  # another origin must never see the API key
                return response
            response.release()
            path = target
        return (
            yield from self._send_once(origin, path, headers, body, timeouts, cancel)
        )  # its redirect is not followed

    def _send_once(
        self,
        origin: _Origin,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: _Timeouts,
        cancel: _Cancel | None,
    ) -> _Steps[_Response]:
        """One request and its response head.

        A server may close a kept-alive connection just as a request is written
        to it (llama.cpp's server does so after every stream). When a reused
        connection fails before the first byte of an answer, the server never
        started one: the request goes once more, at once, on a new connection,
        as curl does. That is not a retry; the same failure on a new connection is.
        """
        route = self.pool.route(origin)
        request = self._request_bytes(route, path, headers, body)
        if cancel is not None and cancel.cancelled:  # a connect cannot be interrupted: do not start one
            raise _cancelled_error()
        connection = self.pool.get_idle(origin, timeouts)
        if connection is not None:
            try:
                return (yield from self._exchange(connection, True, route, request, timeouts, cancel))
            except _StaleConnection:
                pass
        try:
            connection = yield from self.pool.connect(route, timeouts, cancel)
        except Exception as exc:
            raise self._error(exc, cancel, "connecting to", route) from exc
        return (yield from self._exchange(connection, False, route, request, timeouts, cancel))

    def _exchange(
        self,
        connection: _Connection,
        reused: bool,
        route: _Route,
        request: bytes,
        timeouts: _Timeouts,
        cancel: _Cancel | None,
    ) -> _Steps[_Response]:
        """Write the request on ``connection`` and read the head of the response."""
        if cancel is not None:
            cancel.attach(connection)
        received = connection.raw.received
        try:
            sent = connection.send(request)
            if sent < len(request):  # a large body: the rest goes as the socket takes it
                yield from connection.send_rest(request, sent, timeouts)
        except GeneratorExit:  # the steps were abandoned while waiting to write (a cancelled task)
            connection.close()
            raise
        except Exception as exc:
            early = self._early_response(connection, route, cancel) if isinstance(exc, _PEER_CLOSED) else None
            if early is not None:
                return early
            connection.close()
            if reused and isinstance(exc, _PEER_CLOSED) and not (cancel and cancel.cancelled):
                raise _StaleConnection from exc
            raise self._error(exc, cancel, "sending the request to", route) from exc
        try:
            yield _Wait(connection.sock, timeouts.read, polled=False)  # the read of the head waits by itself
            return _Response(connection, _read_head(connection.reader), route, self._recycle, cancel)
        except Exception as exc:
            connection.close()
            if reused and connection.raw.received == received and _never_answered(exc, cancel):
                raise _StaleConnection from exc
            raise self._error(exc, cancel, "waiting for the response from", route) from exc
        except BaseException:  # the steps were abandoned at the wait (a cancelled task)
            connection.close()
            raise

    def _early_response(self, connection: _Connection, route: _Route, cancel: _Cancel | None) -> _Response | None:
        """The answer a server sent before it stopped reading a request (a 413 for a big upload), if any."""
        try:  # never reused: the rest of the request is still unread on the other side
            return _Response(connection, _read_head(connection.reader), route, self._recycle, cancel, reusable=False)
        except Exception:
            return None  # no usable answer: the caller closes the connection and reports the send error

    def _recycle(self, route: _Route, connection: _Connection, reusable: bool) -> None:
        """What a response does with its connection when done: back to the pool if reusable, else closed."""
        if reusable:
            self.pool.put(route.origin, connection)
        else:
            connection.close()

    @staticmethod
    def _error(exc: BaseException, cancel: _Cancel | None, doing: str, route: _Route) -> APIConnectionError:
        """The error for a failed exchange: a cancel shows as such, not as the broken read it caused."""
        if cancel is not None and cancel.cancelled:
            return _cancelled_error()
        return _connection_error(exc, doing, route)

    def _request_bytes(self, route: _Route, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
        """The whole request, sent with one write. Its head is built once per route, path and headers."""
        key = (route, path, id(headers))
        cached = self._heads.get(key)
        if cached is None or cached[0] is not headers:  # the id of a dict that is gone may come back
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            cached = self._heads[key] = (headers, self._request_head(route, path, headers))
        return b"%s%d\r\n\r\n%s" % (cached[1], len(body), body)

    def _request_head(self, route: _Route, path: str, headers: Mapping[str, str]) -> bytes:
        """A request's head, up to the value of its Content-Length."""
        scheme, host, port = route.origin
        proxy = route.proxy
        target = path
        if proxy is not None and scheme == "http":  # a plain-HTTP proxy takes the absolute URL
            target = f"http://{_host_port(host, port, 80)}{path}"
            headers = _merge_headers(headers, proxy.headers)
        fixed = {"Host": _host_port(host, port, 443 if scheme == "https" else 80), "Accept-Encoding": "identity"}
        lines = [f"POST {target} HTTP/1.1"]
        merged = _merge_headers(fixed, headers)
        lines.extend(f"{name}: {value}" for name, value in merged.items() if name.lower() not in _FRAMING_HEADERS)
        lines.append("Content-Length: ")
        return "\r\n".join(lines).encode("latin-1")

    def close(self) -> None:
        self.pool.close()


def _never_answered(exc: BaseException, cancel: _Cancel | None) -> bool:
    """Whether a failure to read a response's first byte was the server closing the connection."""
    if cancel is not None and cancel.cancelled:
        return False
    return isinstance(exc, (_ProtocolError, *_PEER_CLOSED))


def _host_port(host: str, port: int, default_port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port == default_port else f"{host}:{port}"


def _same_origin_path(origin: _Origin, path: str, location: str) -> str | None:
    """The path a redirect points to, or None when it leaves the origin."""
    import urllib.parse

    scheme, host, port = origin
    url = urllib.parse.urljoin(f"{scheme}://{_host_port(host, port, 0)}{path}", location)
    parts = urllib.parse.urlsplit(url)
    try:
        target_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if (parts.scheme, (parts.hostname or "").lower(), target_port) != (scheme, host.lower(), port):
        return None
    return _quote_target(parts.path + ("?" + parts.query if parts.query else ""))


def _quote_target(target: str) -> str:
    """A path (and query) safe for a request line: spaces and non-ASCII percent-encoded."""
    import urllib.parse

    return urllib.parse.quote(target, safe="/?=&;:@!$'()*+,~%-._")


# -- Retries ------------------------------------------------------------------
#
# The policy, as pure functions; the loop that applies it is Together._send.


def _should_retry(status: int, headers: Mapping[str, str], now: float | None = None) -> bool:
    """Whether a response with this status and these headers is worth another attempt."""
    retry_after = _retry_after_seconds(headers, now)
    if retry_after is not None and retry_after > MAX_RETRY_AFTER:
        return False  # the server will not be ready within any wait we would make
    verdict = headers.get("x-should-retry", "").strip().lower()
    if verdict in ("true", "false"):
        return verdict == "true"
    return status in _RETRYABLE_STATUSES or status >= 500


def _retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date."""
    milliseconds = _finite_float(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite_float(value)
    if seconds is not None:
        return seconds
    import email.utils

    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _finite_float(value: str | None) -> float | None:
    """A delay header's number of seconds: digits, with an optional fraction (no sign, exponent or inf)."""
    if value is None or not re.fullmatch(_DELAY_SECONDS, value.strip()):
        return None
    number = float(value)
    return number if number != float("inf") else None  # hundreds of digits: junk, not a wait


def _retry_delay(retries_taken: int, retry_after: float | None, jitter: float) -> float:
    """Seconds to wait before the next attempt; ``jitter`` is a random number in [0, 1)."""
    if retry_after is not None and 0 < retry_after <= MAX_RETRY_AFTER:
        return retry_after
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 32), MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * jitter)


# -- Logging ------------------------------------------------------------------
#
# Records go to logging.getLogger("together_lite"), silent by default. The
# logging module is imported only when TOGETHER_LOG asks for it or the program
# imported it itself: nobody can have configured a handler otherwise.

_logger: logging.Logger | None = None


def _get_logger(level: int) -> logging.Logger | None:
    """The module's logger when it would emit at ``level`` (10 debug, 20 info)."""
    global _logger
    if _logger is None:
        logging_module = sys.modules.get("logging")
        if logging_module is None:
            return None
        _logger = logging_module.getLogger("together_lite")
    return _logger if _logger.isEnabledFor(level) else None


def _configure_logging(level_name: str | None) -> None:
    """Honour TOGETHER_LOG=debug|info by logging to stderr."""
    if not level_name or level_name.strip().lower() not in ("debug", "info"):
        return
    import logging

    logger = logging.getLogger("together_lite")
    logger.setLevel(logging.DEBUG if level_name.strip().lower() == "debug" else logging.INFO)
    if not any(getattr(handler, "_together_lite", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s together_lite %(levelname)s %(message)s"))
        handler._together_lite = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


# -- Clients ------------------------------------------------------------------


def _check_timeout(timeout: Any, default: Any) -> Any:
    """A positive number of seconds, or a timeout object with ``connect``/``read``/``write`` (``httpx.Timeout``)."""
    if timeout is None or type(timeout) in _ABSENT:
        return default
    if hasattr(timeout, "read") and not isinstance(timeout, (int, float)):
        _timeouts(timeout)  # checks each phase
        return timeout
    _check_number("timeout", timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class _Timeouts:
    """Seconds allowed per phase: connecting, each read, each wait while sending (None: no limit)."""

    __slots__ = ("connect", "read", "write")

    def __init__(self, connect: float | None, read: float | None, write: float | None) -> None:
        self.connect = connect
        self.read = read
        self.write = write


def _timeouts(timeout: Any) -> _Timeouts:
    """The phases of a checked timeout: one number for all, or an object's ``connect``, ``read`` and ``write``."""
    if isinstance(timeout, float):
        return _Timeouts(timeout, timeout, timeout)
    phases = []
    for phase in ("connect", "read", "write"):
        value = getattr(timeout, phase, None)
        if value is not None:
            _check_number(f"timeout.{phase}", value)
            if not value > 0:
                raise ValueError(f"timeout.{phase} must be a positive number of seconds or None, got {value!r}")
            value = float(value)
        phases.append(value)
    return _Timeouts(*phases)


def _check_max_retries(max_retries: Any, default: int) -> int:
    if type(max_retries) in _ABSENT:
        return default
    value = _as_int("max_retries", max_retries, 0)
    return default if value is None else value


def _resolve_api_key(api_key: Any) -> str:
    key = api_key or os.environ.get("TOGETHER_API_KEY")
    if not key:
        raise AuthenticationError(
            "The api_key client option must be set either by passing api_key to the client "
            "or by setting the TOGETHER_API_KEY environment variable"
        )
    _check_sendable("api_key", key)
    return key


def _resolve_base_url(base_url: Any) -> tuple[str, str, int, str, str]:
    """Scheme, host, port, path and query of the base URL; a bare origin means its ``/v1``, as together 3.x reads it."""
    url = base_url or os.environ.get("TOGETHER_BASE_URL") or DEFAULT_BASE_URL
    scheme, host, port, path, query = _parse_url(url, "base_url")
    if not path.strip("/"):
        path = "/v1"
    return scheme, host, port, path, query


def _environment_headers() -> dict[str, str]:
    """The headers TOGETHER_CUSTOM_HEADERS names, one ``Name: value`` per line, as together 3.x reads them."""
    text = os.environ.get("TOGETHER_CUSTOM_HEADERS")
    if not text:
        return {}
    headers = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"TOGETHER_CUSTOM_HEADERS line {number} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    return _check_headers(headers)


def _check_query(query: Any, what: str) -> dict[str, Any]:
    if query is None or type(query) in _ABSENT:
        return {}
    if not hasattr(query, "items"):
        raise TypeError(f"{what} must be a dict of query parameters, not {type(query).__name__}")
    return {str(name): value for name, value in query.items() if value is not None and type(value) not in _ABSENT}


def _query_string(query: Mapping[str, Any]) -> str:
    """``?name=value&...``, or nothing for no parameters."""
    if not query:
        return ""
    import urllib.parse

    return "?" + urllib.parse.urlencode(query, doseq=True)


def _refuse_http_client(http_client: Any) -> None:
    if http_client is not None:
        raise TypeError(
            "http_client is not supported: together_lite has its own transport; "
            "use proxy=, ssl_context= and timeout= instead"
        )


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_HOSTS:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name: it may resolve anywhere
        return False


def _warn_if_plain_http(scheme: str, host: str) -> None:
    if scheme == "http" and not _is_loopback(host):
        import warnings

        frame, stacklevel = sys._getframe(1), 2  # the first caller outside this module
        while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
            frame, stacklevel = frame.f_back, stacklevel + 1
        warnings.warn(
            f"together_lite will send the API key unencrypted to {host} (base_url uses http://).",
            InsecureTransportWarning,
            stacklevel=stacklevel,
        )


def _pause(seconds: float, cancel: _Cancel | None) -> None:
    """Sleep between attempts; a cancelled call wakes at once."""
    if cancel is None:
        time.sleep(seconds)
    else:
        cancel.wait(seconds)


@dataclass(eq=False)
class _Call:
    """One API call, checked and ready to send, with what its sending learns (retries, time)."""

    client: Together
    path: str  # the request target: base path, endpoint and query
    body: dict[str, Any]
    parse: Callable[[Any], Any]  # builds the result, or each chunk of a stream
    headers: dict[str, str]
    timeout: Any
    max_retries: int
    cancel: _Cancel | None = None  # set by AsyncTogether, so that a cancelled task abandons the call
    retries_taken: int = 0
    elapsed: float = 0.0  # seconds from sending to the response's head
    _request: Request | None = None

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def request(self) -> Request:
        """The call as errors and raw responses show it (built only when one asks)."""
        if self._request is None:
            scheme, host, port = self.client._origin
            url = f"{scheme}://{_host_port(host, port, 443 if scheme == 'https' else 80)}{self.path}"
            headers = _merge_headers(self.headers, {"Authorization": "Bearer <redacted>"})
            self._request = Request("POST", url, headers)
        return self._request


class Together:
    """A client for Together's chat and text completions (alias ``Client``).

    :param api_key: defaults to the ``TOGETHER_API_KEY`` environment variable.
    :param base_url: defaults to ``TOGETHER_BASE_URL``, else ``https://api.together.xyz/v1``;
        a bare origin (``http://localhost:8080``) means its ``/v1``.
    :param timeout: seconds allowed for connecting, for each read and for each wait while
        sending (default 600); or an object with ``connect``, ``read`` and ``write`` (``httpx.Timeout``).
    :param max_retries: retries after a failed attempt (default 5; 0 means one attempt).
    :param default_headers: extra HTTP headers sent with every request (also ``supplied_headers``,
        the v1 name, and the ``TOGETHER_CUSTOM_HEADERS`` environment variable, one ``Name: value`` a line).
    :param default_query: query parameters added to every request's URL.
    :param proxy: an ``http://[user:pass@]host:port`` proxy; by default the proxy
        environment variables (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) decide.
    :param ssl_context: an ``ssl.SSLContext`` to verify the server with (for a
        corporate CA); by default the system's store, SSL_CERT_FILE or REQUESTS_CA_BUNDLE.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | Any | None = None,
        max_retries: int | None = None,
        supplied_headers: Mapping[str, str] | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, Any] | None = None,
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        http_client: Any = None,
    ) -> None:
        _refuse_http_client(http_client)
        self.supplied_headers = _check_headers(supplied_headers)
        custom = {**_environment_headers(), **self.supplied_headers, **_check_headers(default_headers)}
        self._configure(api_key, base_url, timeout, max_retries, custom, _check_query(default_query, "default_query"))
        self._transport = _Transport(proxy=proxy, ssl_context=ssl_context)
        self._owns_transport = True
        self._sleep: Callable[[float, _Cancel | None], None] = _pause
        self._on_retry: Callable[[str, float, int, int], None] | None = None  # the command line's notes
        self.chat = Chat(self)
        self.completions = Completions(self)
        _warn_if_plain_http(*self._origin[:2])

    def _configure(
        self,
        api_key: Any,
        base_url: Any,
        timeout: Any,
        max_retries: Any,
        custom_headers: dict[str, str],
        default_query: dict[str, Any],
    ) -> None:
        """Check and settle the options a client and its copies are made of."""
        self.api_key = _resolve_api_key(api_key)
        scheme, host, port, path, query = _resolve_base_url(base_url)
        self.base_url = f"{scheme}://{_host_port(host, port, 443 if scheme == 'https' else 80)}{path.rstrip('/')}/"
        self.timeout = _check_timeout(timeout, DEFAULT_TIMEOUT)
        self.max_retries = _check_max_retries(max_retries, DEFAULT_MAX_RETRIES)
        self.default_headers = custom_headers
        if query:
            import urllib.parse

            default_query = {**dict(urllib.parse.parse_qsl(query, keep_blank_values=True)), **default_query}
        self.default_query = default_query
        self._origin = _Origin(scheme, host, port)
        self._base_path = _quote_target(path.rstrip("/") + "/")
        self._timeouts = _timeouts(self.timeout)
        defaults = {
            "User-Agent": _USER_AGENT,
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._headers = _merge_headers(defaults, custom_headers)
        self._stream_headers = _merge_headers({**defaults, "Accept": "text/event-stream"}, custom_headers)

    def copy(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | Any | None = None,
        max_retries: int | None = None,
        default_headers: Mapping[str, str] | None = None,
        set_default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, Any] | None = None,
        set_default_query: Mapping[str, Any] | None = None,
        http_client: Any = None,
    ) -> Together:
        """A client like this one with some options changed, sharing its connections (also ``with_options``).

        ``default_headers``/``default_query`` are added to this client's; ``set_default_headers``/
        ``set_default_query`` replace them. Closing the copy leaves the shared connections open.
        """
        _refuse_http_client(http_client)
        headers = _replaced_or_merged(self.default_headers, default_headers, set_default_headers, "headers")
        query = _replaced_or_merged(self.default_query, default_query, set_default_query, "query")
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._configure(
            api_key or self.api_key,
            base_url or self.base_url,
            self.timeout if timeout is None else timeout,
            self.max_retries if max_retries is None else max_retries,
            _check_headers(headers),
            _check_query(query, "default_query"),
        )
        clone._owns_transport = False
        clone.chat = Chat(clone)
        clone.completions = Completions(clone)
        if base_url:
            _warn_if_plain_http(*clone._origin[:2])
        return clone

    with_options = copy

    @property
    def with_raw_response(self) -> _RawClient:
        """The client's resources, whose ``create()`` returns the HTTP response (``.headers``, ``.parse()``)."""
        return _RawClient(self, streaming=False)

    @property
    def with_streaming_response(self) -> _RawClient:
        """The client's resources, whose ``create()`` is a context manager over the unread response."""
        return _RawClient(self, streaming=True)

    def __repr__(self) -> str:
        return _client_repr(self)

    def close(self) -> None:
        """Close the kept-alive connections (a copy leaves those it shares). The client still works afterwards."""
        if self._owns_transport:
            self._transport.close()

    def is_closed(self) -> bool:
        return self._transport.pool._closed

    def __enter__(self) -> Together:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The request path, shared by both endpoints and the async client.

    def _call(
        self,
        endpoint: str,
        body: dict[str, Any],
        parse: Callable[[Any], Any],
        timeout: Any = None,
        max_retries: Any = None,
        extra_headers: Any = None,
        extra_query: Any = None,
    ) -> _Call:
        """A checked call to ``endpoint``; the per-call options override the client's."""
        headers = self._stream_headers if body.get("stream") is True else self._headers
        if extra_headers is not None and type(extra_headers) not in _ABSENT:
            headers = _with_extra_headers(headers, extra_headers)
        query = self.default_query
        if extra_query:
            query = {**query, **_check_query(extra_query, "extra_query")}
        path = self._base_path + endpoint + _query_string(query)
        timeout = _check_timeout(timeout, self.timeout)
        return _Call(self, path, body, parse, headers, timeout, _check_max_retries(max_retries, self.max_retries))

    def _execute(self, call: _Call) -> Any:
        """Send a call; its parsed result, or a Stream."""
        response = self._send(call)
        if call.stream:
            return _open_stream(response, call)
        result = call.parse(_json_result(response, call))
        result._request_id = _request_id(response.headers)
        return result

    def _send(self, call: _Call, read_body: bool = True) -> _Response:
        """Send with retries, in this thread; see ``_send_steps``."""
        return _run_steps(self._send_steps(call, read_body), self._sleep, call.cancel)

    def _send_steps(self, call: _Call, read_body: bool = True) -> _Steps[_Response]:
        """Send with retries: on connection errors, timeouts, 408, 409, 429 and 5xx.

        A non-streaming body is read inside the loop, so a response cut off
        half-way is retried too; a stream is retried only until its headers.
        A generator of the waits it makes (see ``_run_steps``).
        """
        data = _encode_body(call.body)
        logger = _get_logger(10)
        if logger is not None:
            logger.debug("request body %s", data.decode("utf-8", "replace"))
        timeouts = self._timeouts if call.timeout is self.timeout else _timeouts(call.timeout)
        cancel = call.cancel
        read_body = read_body and not call.stream
        for retries_taken in range(call.max_retries + 1):
            call.retries_taken = retries_taken
            started = time.monotonic()
            try:
                response = yield from self._transport.send(
                    self._origin, call.path, call.headers, data, timeouts, cancel
                )
                if response.status < 300 and read_body:
                    response.read()
            except APIConnectionError as exc:
                if retries_taken >= call.max_retries or not exc.retryable or (cancel and cancel.cancelled):
                    exc.request = exc.request or call.request
                    raise
                yield self._pause(retries_taken, None, exc._reason, call)
                continue
            call.elapsed = time.monotonic() - started
            _log_response(call, response)
            if response.status < 300:
                return response
            if retries_taken < call.max_retries and _should_retry(response.status, response.headers):
                response.release()
                reason = f"HTTP {response.status} from {response.route}"
                yield self._pause(retries_taken, response.headers, reason, call)
                continue
            raise _error_response(response, call)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, retries_taken: int, headers: Mapping[str, str] | None, reason: str, call: _Call) -> _Pause:
        """The wait before the next attempt, said in the log (and to the command line)."""
        import random

        retry_after = _retry_after_seconds(headers) if headers else None
        delay = _retry_delay(retries_taken, retry_after, random.random())
        _log_retry(reason, delay, retries_taken + 1, call.max_retries)
        if self._on_retry is not None:
            self._on_retry(reason, delay, retries_taken + 1, call.max_retries)
        return _Pause(delay)


Client = Together


def _with_extra_headers(headers: Mapping[str, str], extra: Mapping[str, Any]) -> dict[str, str]:
    """``headers`` with a call's ``extra_headers``; one given as ``omit`` is not sent at all."""
    if not hasattr(extra, "items"):
        raise TypeError("extra_headers must be a dict of str to str")
    removed = {name.lower() for name, value in extra.items() if type(value) in _ABSENT}
    added = _check_headers({name: value for name, value in extra.items() if type(value) not in _ABSENT})
    return {name: value for name, value in _merge_headers(headers, added).items() if name.lower() not in removed}


def _replaced_or_merged(
    current: Mapping[str, Any], added: Mapping[str, Any] | None, replacement: Mapping[str, Any] | None, what: str
) -> dict[str, Any]:
    if added is not None and replacement is not None:
        raise ValueError(f"The `default_{what}` and `set_default_{what}` arguments are mutually exclusive")
    if replacement is not None:
        return dict(replacement)
    return {**current, **(added or {})}


def _client_repr(client: Together | AsyncTogether) -> str:
    """The client's settings, never its API key."""
    name = type(client).__name__
    return f"{name}(base_url={client.base_url!r}, timeout={client.timeout}, max_retries={client.max_retries})"


def _log_response(call: _Call, response: _Response) -> None:
    logger = _get_logger(20)
    if logger is not None:
        request_id = _request_id(response.headers)
        url, elapsed = call.request.url, call.elapsed
        logger.info("POST %s -> %d in %.3fs (request id %s)", url, response.status, elapsed, request_id)


def _log_retry(reason: str, delay: float, retry: int, max_retries: int) -> None:
    logger = _get_logger(20)
    if logger is not None:
        logger.info("retrying in %.2fs (retry %d of %d) after %s", delay, retry, max_retries, reason)


def _json_result(response: _Response, call: _Call) -> Any:
    """The decoded JSON of a successful response."""
    raw = response.read()
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        kind = response.headers.get("content-type", "no content type")
        shown = _text_summary(raw.decode("utf-8", "replace")) or "an empty body"
        raise JSONError(
            f"The API answered {response.status} with a body that is not JSON ({kind}): {shown}",
            response=response.public(call.request, raw),
            body=raw.decode("utf-8", "replace"),
        ) from None
    if type(payload) is dict and payload.get("error") and "choices" not in payload:
        raise _stream_error(payload, response.public(call.request, raw))
    if type(payload) is not dict:
        raise _not_an_object(response.public(call.request, raw), payload)
    return payload


# -- Clients: raw responses ---------------------------------------------------


class _Text(str):
    """A str that can be called too: ``response.text`` (openai) and ``response.text()`` (together 3.x) both work."""

    def __call__(self) -> str:
        return str(self)


class APIResponse(_Generic[_T]):
    """A call's HTTP response, from ``with_raw_response`` (body read) or ``with_streaming_response`` (unread).

    ``parse()`` gives what ``create()`` would have returned (a Stream for
    ``stream=True``); ``headers`` answer in any case (``x-ratelimit-remaining``).
    """

    def __init__(self, response: _Response, call: _Call) -> None:
        self._response = response
        self._call = call
        self.http_response = response.public(call.request, response.content)
        self.retries_taken = call.retries_taken
        self._parsed: Any = _UNSET

    @property
    def headers(self) -> dict[str, str]:
        return self.http_response.headers

    @property
    def status_code(self) -> int:
        return self.http_response.status_code

    @property
    def http_request(self) -> Request:
        return self._call.request

    @property
    def url(self) -> str:
        return self._call.request.url

    @property
    def method(self) -> str:
        return "POST"

    @property
    def http_version(self) -> str:
        return self.http_response.http_version

    @property
    def elapsed(self) -> Any:
        """The time from sending the request to having the response's head, as a ``timedelta``."""
        import datetime

        return datetime.timedelta(seconds=self._call.elapsed)

    @property
    def request_id(self) -> str | None:
        return _request_id(self.headers)

    @property
    def is_closed(self) -> bool:
        return self._response.finished

    def parse(self, *, to: Any = None) -> _T:
        """The result ``create()`` would have returned; ``to=str``, ``bytes`` or ``dict`` give the body so."""
        if to is not None:
            return self._parse_to(to)  # type: ignore[no-any-return]
        if self._parsed is _UNSET:
            if self._call.stream:
                self._parsed = Stream(self._response, self._call.parse, self._call.request)
            else:
                self._parsed = self._call.parse(_json_result(self._response, self._call))
                self._parsed._request_id = self.request_id
        return self._parsed  # type: ignore[no-any-return]

    def _parse_to(self, to: Any) -> Any:
        if to is str:
            return self.text
        if to is bytes:
            return self.content
        if to in (dict, object):
            return self.json()
        if isinstance(to, type) and issubclass(to, _Model):
            return to._parse(self.json())
        raise TypeError(f"parse(to=...) takes str, bytes, dict or a result type, not {to!r}")

    def read(self) -> bytes:
        """The whole body (read now if it was not yet)."""
        content = self._response.read()
        self.http_response._content = content
        return content

    @property
    def content(self) -> bytes:
        return self.read()

    @property
    def text(self) -> _Text:
        return _Text(self.read().decode("utf-8", "replace"))

    def json(self) -> Any:
        return json.loads(self.read())

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body as it arrives (or as it was read)."""
        if self._response.content is not None:
            yield self._response.content
            return
        try:
            yield from self._response.iter_bytes()
            self._response.release()
        finally:
            self._response.close()

    def iter_text(self, chunk_size: int | None = None) -> Iterator[str]:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for piece in self.iter_bytes():
            text = decoder.decode(piece)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def iter_lines(self) -> Iterator[str]:
        """The body's lines as they arrive, without their line ends (an SSE stream's ``data: ...`` lines)."""
        pending = ""
        for text in self.iter_text():
            lines = re.split(_LINE_BREAK, pending + text)
            pending = lines.pop()
            yield from lines
        if pending:
            yield pending

    def close(self) -> None:
        self._response.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.status_code} {self.http_response.reason_phrase}]>"


#: A cached value not computed yet.
_UNSET: Final[Any] = object()


class _ResponseContextManager:
    """What ``with_streaming_response.create()`` returns: the request goes out on ``with``, and ends with it."""

    def __init__(self, client: Together, call: _Call) -> None:
        self._client = client
        self._call = call
        self._response: APIResponse[Any] | None = None

    def __enter__(self) -> APIResponse[Any]:
        self._response = APIResponse(self._client._send(self._call, read_body=False), self._call)
        return self._response

    def __exit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.close()


class _RawResource:
    """``with_raw_response`` / ``with_streaming_response`` of a resource: its ``create()`` gives the response."""

    def __init__(self, resource: _Resource, *, streaming: bool) -> None:
        self._resource = resource
        self._streaming = streaming

    def create(self, **arguments: Any) -> Any:
        """The same arguments as the resource's ``create()``."""
        call = self._resource._prepare(arguments)
        client = self._resource._client
        if self._streaming:
            return _ResponseContextManager(client, call)
        return APIResponse(client._send(call), call)


class _RawClient:
    """``client.with_raw_response``: the client's resources, each giving responses."""

    def __init__(self, client: Together, *, streaming: bool) -> None:
        self.chat = _RawChat(_RawResource(client.chat.completions, streaming=streaming))
        self.completions = _RawResource(client.completions, streaming=streaming)


class _RawChat:
    def __init__(self, completions: _RawResource) -> None:
        self.completions = completions


# -- Clients: structured output -----------------------------------------------
#
# chat.completions.parse(response_format=SomeModel) reads any class that has
# pydantic's model_json_schema() and model_validate_json(), without importing pydantic.


class APIResponseValidationError(APIError):
    """The API's answer does not fit the schema asked for; ``completion`` is the answer."""

    def __init__(self, message: str, *, completion: Any = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.completion = completion


class LengthFinishReasonError(APIResponseValidationError):
    """The answer was cut off by ``max_tokens`` before its JSON was complete."""


class ContentFilterFinishReasonError(APIResponseValidationError):
    """The answer was stopped by the content filter."""


class RefusalError(APIResponseValidationError):
    """The model refused to answer; ``refusal`` holds what it said."""

    def __init__(self, message: str, *, refusal: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.refusal = refusal


def _is_model_class(response_format: Any) -> bool:
    return isinstance(response_format, type) and hasattr(response_format, "model_json_schema")


def _json_schema_format(model: type) -> dict[str, Any]:
    """The ``json_schema`` response format for a pydantic-like class, made strict as structured output wants."""
    schema = _strict_schema(model.model_json_schema())  # type: ignore[attr-defined]
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema, "strict": True}}


def _strict_schema(schema: Any) -> Any:
    """A JSON schema where every object lists all its properties as required and allows no others."""
    if isinstance(schema, list):
        return [_strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {name: _strict_schema(value) for name, value in schema.items()}
    if strict.get("type") == "object" and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
    if isinstance(strict.get("properties"), dict):
        strict["required"] = list(strict["properties"])
    if "default" in strict and strict["default"] is None:
        del strict["default"]  # optional fields become required but nullable
    return strict


def _with_parsed(completion: Any, response_format: Any) -> Any:
    """The completion with each choice's ``message.parsed``; raises when an answer cannot be parsed."""
    for choice in completion.choices or ():
        reason = choice.finish_reason
        if reason == "length":
            raise LengthFinishReasonError(
                "Could not parse the answer: the length limit was reached before it was complete.",
                completion=completion,
            )
        if reason == "content_filter":
            raise ContentFilterFinishReasonError(
                "Could not parse the answer: the content filter stopped it.", completion=completion
            )
        message = choice.message
        if message is None:
            continue
        if message.refusal:
            raise RefusalError(f"The model refused: {message.refusal}", refusal=message.refusal, completion=completion)
        message.parsed = _parse_content(message.content, response_format, completion)
    return completion


def _parse_content(content: Any, response_format: Any, completion: Any) -> Any:
    if not isinstance(content, str) or not content.strip():
        raise APIResponseValidationError("The answer has no content to parse.", completion=completion)
    try:
        if _is_model_class(response_format):
            return response_format.model_validate_json(content)
        return json.loads(content)
    except Exception as exc:  # pydantic's ValidationError, or a ValueError for JSON
        detail = " ".join(str(exc).split())
        raise APIResponseValidationError(
            f"The answer does not fit the response format: {detail}", completion=completion
        ) from exc


# -- Clients: the resources ---------------------------------------------------

#: The keywords of ``create()`` that set up the call and are never sent in the body.
_CALL_OPTIONS: Final = ("timeout", "max_retries", "extra_headers", "extra_query", "extra_body")


class _Resource:
    """What ``chat.completions`` and ``completions`` share: checking arguments and building the call."""

    _endpoint: ClassVar[str]
    _required: ClassVar[tuple[str, str]]
    _result: ClassVar[type[_Model]]
    _chunk: ClassVar[type[_Model]]

    def __init__(self, client: Together) -> None:
        self._client = client

    @property
    def with_raw_response(self) -> _RawResource:
        """This resource, with a ``create()`` that returns the HTTP response (``.headers``, ``.parse()``)."""
        return _RawResource(self, streaming=False)

    @property
    def with_streaming_response(self) -> _RawResource:
        """This resource, with a ``create()`` that is a context manager over the unread response."""
        return _RawResource(self, streaming=True)

    def _prepare(self, arguments: dict[str, Any]) -> _Call:
        """A checked call from ``create()``'s keyword arguments; those it does not name go into the body."""
        options = {name: arguments.pop(name, None) for name in _CALL_OPTIONS}
        given = {name: value for name, value in arguments.items() if value is not None and type(value) not in _ABSENT}
        for name in self._required:
            if name not in given:
                raise TypeError(f"create() missing required keyword argument: {name!r}")
        self._check(given)
        body = _build_body(given, options.pop("extra_body") or {})
        parse = self._chunk._parse if body.get("stream") is True else self._result._parse
        return self._client._call(self._endpoint, body, parse, **options)

    def _check(self, arguments: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover


class ChatCompletions(_Resource):
    """``client.chat.completions``."""

    _endpoint = "chat/completions"
    _required = ("model", "messages")
    _result = ChatCompletionResponse
    _chunk = ChatCompletionChunk

    if TYPE_CHECKING:

        @overload
        def create(
            self, *, messages: _Messages, model: str, stream: Literal[False] = False, **params: Unpack[_ChatParams]
        ) -> ChatCompletionResponse: ...
        @overload
        def create(
            self, *, messages: _Messages, model: str, stream: Literal[True], **params: Unpack[_ChatParams]
        ) -> Stream[ChatCompletionChunk]: ...
        @overload
        def create(
            self, *, messages: _Messages, model: str, stream: bool, **params: Unpack[_ChatParams]
        ) -> ChatCompletionResponse | Stream[ChatCompletionChunk]: ...

    def create(
        self,
        *,
        messages: _Messages,
        model: str,
        max_tokens: _Maybe[int] = None,
        stop: _Maybe[str | Sequence[str]] = None,
        temperature: _Maybe[float] = None,
        top_p: _Maybe[float] = None,
        top_k: _Maybe[int] = None,
        repetition_penalty: _Maybe[float] = None,
        presence_penalty: _Maybe[float] = None,
        frequency_penalty: _Maybe[float] = None,
        min_p: _Maybe[float] = None,
        logit_bias: _Maybe[Mapping[str, float]] = None,
        seed: _Maybe[int] = None,
        stream: bool = False,
        logprobs: _Maybe[int] = None,
        echo: _Maybe[bool] = None,
        n: _Maybe[int] = None,
        safety_model: _Maybe[str] = None,
        response_format: _Maybe[Mapping[str, Any]] = None,
        tools: _Maybe[Sequence[Mapping[str, Any]]] = None,
        tool_choice: _Maybe[str | Mapping[str, Any]] = None,
        timeout: _Maybe[float | _TimeoutObject] = None,
        max_retries: _Maybe[int] = None,
        extra_headers: _Maybe[Mapping[str, Any]] = None,
        extra_query: _Maybe[Mapping[str, Any]] = None,
        extra_body: _Maybe[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> ChatCompletionResponse | Stream[ChatCompletionChunk]:
        """Create a chat completion; with ``stream=True``, a Stream of ChatCompletionChunk.

        Every keyword the API knows can be given; those not named here (for
        example ``reasoning_effort``) go into the JSON body unchanged, as does
        ``extra_body``. ``timeout``, ``max_retries``, ``extra_headers`` and
        ``extra_query`` apply to this call only and are never sent in the body.
        """
        arguments = {
            "model": model, "messages": messages, "max_tokens": max_tokens, "stop": stop, "temperature": temperature,
            "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty,
            "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty, "min_p": min_p,
            "logit_bias": logit_bias, "seed": seed, "stream": stream, "logprobs": logprobs, "echo": echo, "n": n,
            "safety_model": safety_model, "response_format": response_format, "tools": tools,
            "tool_choice": tool_choice, "timeout": timeout, "max_retries": max_retries,
            "extra_headers": extra_headers, "extra_query": extra_query, "extra_body": extra_body, **kwargs,
        }  # fmt: skip
        return self._client._execute(self._prepare(arguments))  # type: ignore[no-any-return]

    def parse(
        self, *, messages: _Messages, model: str, response_format: Any, **params: Unpack[_ParseParams]
    ) -> ChatCompletionResponse:
        """Create a chat completion whose answer is parsed into ``response_format``, as openai's ``parse()``.

        ``response_format`` is a pydantic model class (any class with
        ``model_json_schema()`` and ``model_validate_json()``), sent as a strict
        ``json_schema``; each ``choice.message.parsed`` is the validated object.
        A dict response format is sent as it is and ``parsed`` is the decoded JSON.
        Raises APIResponseValidationError (LengthFinishReasonError,
        ContentFilterFinishReasonError, RefusalError) when an answer cannot be parsed.
        """
        arguments = _parse_arguments(messages, model, response_format, params)
        completion = self._client._execute(self._prepare(arguments))
        return _with_parsed(completion, response_format)  # type: ignore[no-any-return]

    def _check(self, arguments: dict[str, Any]) -> None:
        _require_str("model", arguments["model"])
        _check_messages(arguments["messages"])
        tools, tool_choice = arguments.get("tools"), arguments.get("tool_choice")
        if tools is not None and not isinstance(tools, (list, tuple)):
            raise TypeError(f"tools must be a list of tool dicts, not {type(tools).__name__}")
        if tool_choice is not None and not isinstance(tool_choice, (str, dict)):
            raise TypeError(f"tool_choice must be a str or a dict, not {type(tool_choice).__name__}")
        if _is_model_class(arguments.get("response_format")):
            raise TypeError("response_format is a class: use chat.completions.parse() for structured output")


def _parse_arguments(messages: Any, model: Any, response_format: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """``parse()``'s arguments as ``create()`` takes them: the class becomes a json_schema, never a stream."""
    if params.get("stream"):
        raise TypeError("parse() does not stream; use create(stream=True)")
    if _is_model_class(response_format):
        response_format = _json_schema_format(response_format)
    elif not isinstance(response_format, dict):
        raise TypeError("response_format must be a pydantic model class or a dict")
    return {"model": model, "messages": messages, **params, "response_format": response_format, "stream": False}


class Chat:
    """``client.chat``: holds ``completions``."""

    def __init__(self, client: Together) -> None:
        self.completions = ChatCompletions(client)


class Completions(_Resource):
    """``client.completions``: text completions."""

    _endpoint = "completions"
    _required = ("model", "prompt")
    _result = CompletionResponse
    _chunk = CompletionChunk

    if TYPE_CHECKING:

        @overload
        def create(
            self, *, model: str, prompt: str, stream: Literal[False] = False, **params: Unpack[_CompletionParams]
        ) -> CompletionResponse: ...
        @overload
        def create(
            self, *, model: str, prompt: str, stream: Literal[True], **params: Unpack[_CompletionParams]
        ) -> Stream[CompletionChunk]: ...
        @overload
        def create(
            self, *, model: str, prompt: str, stream: bool, **params: Unpack[_CompletionParams]
        ) -> CompletionResponse | Stream[CompletionChunk]: ...

    def create(
        self,
        *,
        model: str,
        prompt: str,
        max_tokens: _Maybe[int] = None,
        stop: _Maybe[str | Sequence[str]] = None,
        temperature: _Maybe[float] = None,
        top_p: _Maybe[float] = None,
        top_k: _Maybe[int] = None,
        repetition_penalty: _Maybe[float] = None,
        presence_penalty: _Maybe[float] = None,
        frequency_penalty: _Maybe[float] = None,
        min_p: _Maybe[float] = None,
        logit_bias: _Maybe[Mapping[str, float]] = None,
        seed: _Maybe[int] = None,
        stream: bool = False,
        logprobs: _Maybe[int] = None,
        echo: _Maybe[bool] = None,
        n: _Maybe[int] = None,
        safety_model: _Maybe[str] = None,
        timeout: _Maybe[float | _TimeoutObject] = None,
        max_retries: _Maybe[int] = None,
        extra_headers: _Maybe[Mapping[str, Any]] = None,
        extra_query: _Maybe[Mapping[str, Any]] = None,
        extra_body: _Maybe[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> CompletionResponse | Stream[CompletionChunk]:
        """Create a text completion; with ``stream=True``, a Stream of CompletionChunk.

        Keywords not named here go into the JSON body unchanged, as does
        ``extra_body``; ``timeout``, ``max_retries``, ``extra_headers`` and
        ``extra_query`` apply to this call only.
        """
        arguments = {
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "stop": stop, "temperature": temperature,
            "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty,
            "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty, "min_p": min_p,
            "logit_bias": logit_bias, "seed": seed, "stream": stream, "logprobs": logprobs, "echo": echo, "n": n,
            "safety_model": safety_model, "timeout": timeout, "max_retries": max_retries,
            "extra_headers": extra_headers, "extra_query": extra_query, "extra_body": extra_body, **kwargs,
        }  # fmt: skip
        return self._client._execute(self._prepare(arguments))  # type: ignore[no-any-return]

    def _check(self, arguments: dict[str, Any]) -> None:
        _require_str("model", arguments["model"])
        prompt = arguments["prompt"]
        if not isinstance(prompt, str) and not (
            isinstance(prompt, (list, tuple)) and all(isinstance(item, str) for item in prompt)
        ):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")


# -- Async --------------------------------------------------------------------
#
# AsyncTogether runs the sync machinery on its own thread pool, sized for I/O:
# the event loop's default executor has a handful of workers and would turn a
# few hundred concurrent calls into waves. Arguments are checked on the event
# loop, before anything is handed to a thread.


class _Workers:
    """The threads an AsyncTogether runs blocking calls on.

    A thread is started for a job only when no idle one can take it, and
    without waiting for it to run (ThreadPoolExecutor waits for each new
    thread to start, which is most of a burst's cost). A few stay warm; the
    others end after ``idle_seconds`` without work.
    """

    idle_seconds = 60.0
    warm = 4  # threads kept however long they are idle

    def __init__(self, max_workers: int) -> None:
        import queue

        self.max_workers = max_workers
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._empty = queue.Empty
        self._lock = threading.Lock()
        self._threads = 0  # running
        self._spare = 0  # idle, and not yet promised to a submitted job
        self._waiting = 0  # jobs queued with no worker promised (all were busy)
        self._shut = False

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on a worker; it delivers its own result."""
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit after the workers were shut down")
            self._jobs.put((function, args))
            if self._spare:
                self._spare -= 1
                return
            if self._threads >= self.max_workers:
                self._waiting += 1  # the next worker to finish takes it
                return
            self._threads += 1
        import _thread

        _thread.start_new_thread(self._work, ())

    def shutdown(self) -> None:
        """No new jobs; each worker ends when it is done with its current one."""
        with self._lock:
            self._shut = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_seconds)
            except self._empty:
                if self._retire():
                    return
                continue
            if job is None:
                self._leave()
                return
            function, args = job
            function(*args)
            del job, function, args  # nothing of a finished job stays alive while the thread waits
            with self._lock:
                if self._waiting:
                    self._waiting -= 1
                else:
                    self._spare += 1

    def _retire(self) -> bool:
        with self._lock:
            if self._spare and self._threads > self.warm:
                self._spare -= 1
                self._threads -= 1
                return True
            return False

    def _leave(self) -> None:
        with self._lock:
            self._threads -= 1
            self._spare = max(self._spare - 1, 0)

    @property
    def threads(self) -> int:
        """How many worker threads are running."""
        return self._threads


def _run_for(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    context: Any,
    function: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """In a worker: run ``function`` in ``context`` and hand its outcome to ``future`` on its loop."""
    try:
        result = context.run(function, *args)
    except BaseException as exc:  # delivered to the awaiting task, whatever it is
        _deliver(loop, future, _set_exception, exc)
    else:
        _deliver(loop, future, _set_result, result)


def _deliver(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], setter: Callable[[Any, Any], None], value: Any
) -> None:
    try:
        loop.call_soon_threadsafe(setter, future, value)
    except RuntimeError:  # the loop is closed: nobody will take the result
        _close_abandoned(value)


def _loop_watches(fd: int) -> bool:
    """Whether the running event loop can watch a socket for bytes (Windows' proactor loop cannot)."""
    import asyncio

    loop = asyncio.get_running_loop()
    kind = type(loop)
    watches = _LOOP_WATCHES.get(kind)
    if watches is None:
        try:
            loop.add_reader(fd, _wake, loop.create_future())
        except NotImplementedError:
            watches = False
        else:
            loop.remove_reader(fd)
            watches = True
        _LOOP_WATCHES[kind] = watches
    return watches


#: Whether each kind of event loop met so far can watch sockets.
_LOOP_WATCHES: dict[type, bool] = {}


async def _ready(
    fd: int, timeout: float | None, waiter: asyncio.Future[bool] | None, *, writable: bool = False
) -> bool:
    """Wait on the event loop until the socket ``fd`` has bytes, or room to write: True; False after ``timeout``.

    ``waiter``, if given, is the future waited on: setting it ends the wait early.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    if waiter is None:
        waiter = loop.create_future()
    watch, unwatch = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    watch(fd, _wake, waiter)
    expiry = None if timeout is None else loop.call_later(timeout, _wake, waiter, False)
    try:
        return await waiter
    finally:
        unwatch(fd)
        if expiry is not None:
            expiry.cancel()


def _is_cancellation(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


def _wake(future: asyncio.Future[bool], ready: bool = True) -> None:
    if not future.done():
        future.set_result(ready)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if future.cancelled():
        _close_abandoned(result)  # the task gave up on the call while it ran
    else:
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)


def _close_abandoned(result: Any) -> None:
    """A result nobody will take: close it if it holds a connection."""
    if isinstance(result, _Done):
        result = result.value
    if isinstance(result, (Stream, _Response)):
        result.close()


class AsyncTogether:
    """The async client (alias ``AsyncClient``): the same options as Together, plus ``max_workers``.

    ``await client.chat.completions.create(...)``; with ``stream=True`` the
    awaited result is an AsyncStream (``async for chunk in stream``). A call
    waits for the network on the event loop and sends, reads and parses on the
    client's own threads, up to ``max_workers`` of them (default 8; 512 where
    the loop cannot watch sockets). Use ``async with`` or ``await client.close()``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | Any | None = None,
        max_retries: int | None = None,
        supplied_headers: Mapping[str, str] | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, Any] | None = None,
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        http_client: Any = None,
        max_workers: int | None = None,
    ) -> None:
        self._sync = Together(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            supplied_headers=supplied_headers,
            default_headers=default_headers,
            default_query=default_query,
            proxy=proxy,
            ssl_context=ssl_context,
            http_client=http_client,
        )
        self._max_workers_given = _as_int("max_workers", max_workers, 1)
        self.max_workers = self._max_workers_given or DEFAULT_MAX_WORKERS
        self._executor: _Workers | None = None
        self._executor_lock = threading.Lock()
        self._owns_executor = True
        self._sleep: Callable[[float], Awaitable[None]] = _async_sleep  # between attempts
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)

    @property
    def api_key(self) -> str:
        return self._sync.api_key

    @property
    def base_url(self) -> str:
        return self._sync.base_url

    @property
    def timeout(self) -> Any:
        return self._sync.timeout

    @property
    def max_retries(self) -> int:
        return self._sync.max_retries

    @property
    def default_headers(self) -> dict[str, str]:
        return self._sync.default_headers

    @property
    def default_query(self) -> dict[str, Any]:
        return self._sync.default_query

    def copy(self, **options: Any) -> AsyncTogether:
        """A client like this one with some options changed (also ``with_options``); see ``Together.copy``."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._sync = self._sync.copy(**options)
        clone._executor = self._pool()  # the copy runs on the same threads
        clone._executor_lock = threading.Lock()
        clone._owns_executor = False
        clone.chat = AsyncChat(clone)
        clone.completions = AsyncCompletions(clone)
        return clone

    with_options = copy

    @property
    def with_raw_response(self) -> _AsyncRawClient:
        """The client's resources, whose ``create()`` returns the HTTP response (``.headers``, ``await .parse()``)."""
        return _AsyncRawClient(self, streaming=False)

    @property
    def with_streaming_response(self) -> _AsyncRawClient:
        """The client's resources, whose ``create()`` is an ``async with`` over the unread response."""
        return _AsyncRawClient(self, streaming=True)

    def __repr__(self) -> str:
        return _client_repr(self)

    async def close(self) -> None:
        """Stop the thread pool and close the kept-alive connections (a copy leaves what it shares)."""
        if self._owns_executor:
            with self._executor_lock:
                executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown()
        self._sync.close()

    aclose = close

    def is_closed(self) -> bool:
        return self._sync.is_closed()

    async def __aenter__(self) -> AsyncTogether:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _pool(self) -> _Workers:
        executor = self._executor
        if executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = _Workers(self.max_workers)
                executor = self._executor
        return executor

    async def _run(self, cancel: _Cancel | None, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` on a worker with this task's contextvars; cancelling the task abandons it."""
        import asyncio
        import contextvars

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pool().submit(_run_for, loop, future, contextvars.copy_context(), function, args)
        try:
            return await future
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.cancel()
            raise

    def _wait_on_workers(self) -> None:
        """The loop cannot watch sockets: calls wait on workers, so allow as many as may wait at once."""
        if self._max_workers_given is None and self.max_workers < _BLOCKING_MAX_WORKERS:
            self.max_workers = self._pool().max_workers = _BLOCKING_MAX_WORKERS

    async def _execute(self, call: _Call) -> Any:
        """Send a checked call (see ``_send``); a stream comes back as an AsyncStream."""
        response = await self._send(call, True)
        if call.stream:
            kind = response.headers.get("content-type", "").lower()
            if kind and "event-stream" not in kind:  # an answer instead of a stream: its body is read to say why
                return await self._run(None, _open_stream, response, call)
            return AsyncStream(_open_stream(response, call), self)
        result = call.parse(_json_result(response, call))  # the body was read on a worker
        result._request_id = _request_id(response.headers)
        return result

    async def _send(self, call: _Call, read_body: bool) -> _Response:
        """Run a call's steps: each stretch between two waits on a worker, the waits on the event loop.

        So a call waiting for the server holds no thread: a burst of calls
        needs only as many workers as are sending or reading at one moment.
        Where the loop cannot watch sockets, the steps all run on one worker.
        """
        cancel = call.cancel = _Cancel()
        steps = self._sync._send_steps(call, read_body)
        error: BaseException | None = None
        while True:
            step = await self._run(cancel, _advance, steps, error)
            if isinstance(step, _Done):
                return step.value  # type: ignore[no-any-return]
            error = None
            try:
                if isinstance(step, _Pause):
                    await self._sleep(step.seconds)
                elif not _loop_watches(step.sock.fileno()):
                    self._wait_on_workers()
                    return await self._run(cancel, _run_steps, steps, self._sync._sleep, cancel, step)  # type: ignore[no-any-return]
                elif not await _ready(step.sock.fileno(), step.timeout, None, writable=step.writable):
                    error = _timeout_error()  # thrown into the steps at their wait, as a blocking call would raise it
            except BaseException:  # cancelled while waiting here: no worker runs the steps now
                steps.close()
                raise


class _Done:
    """The end of a call's steps, with what they returned."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _advance(steps: _Steps[Any], error: BaseException | None) -> Any:
    """On a worker: run the steps to their next wait (raising ``error`` at the one they are at), or to their end."""
    try:
        return steps.throw(error) if error is not None else next(steps)
    except StopIteration as done:
        return _Done(done.value)


async def _async_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


AsyncClient = AsyncTogether


class AsyncStream(_Generic[_T]):
    """The chunks of a streamed completion, for ``async for``; ``aclose()`` or ``async with`` releases it.

    Where the event loop watches sockets (every loop but Windows' proactor), the
    stream's socket is made non-blocking and its chunks are read on the loop as
    they arrive: a waiting stream holds no thread. Elsewhere each read runs on
    a worker.
    """

    def __init__(self, stream: Stream[_T], client: AsyncTogether) -> None:
        self.stream = stream
        self._client = client
        self._pending: Iterator[Any] = iter(())
        self._cut_off = False  # a read was cancelled, which closed the stream mid-way
        self._on_loop: bool | None = None  # whether reads run on the event loop; settled by the first
        self._timeout = stream._read_timeout()  # for each wait for more, as a blocking read has it
        self._waiter: asyncio.Future[bool] | None = None  # set while waiting for the socket to have bytes

    async def _next_batch(self) -> Any:
        """The chunks of the next read that has any; ``_END`` at the end."""
        if self._on_loop is None:
            self._on_loop = _loop_watches(self.stream._fileno())
            if self._on_loop:
                self.stream._http.set_nonblocking()
        if not self._on_loop:
            self._client._wait_on_workers()
            return await self._client._run(None, self.stream._next_available)
        while True:
            try:
                batch = self.stream._read()
            except StopIteration:
                return _END
            if batch:
                return batch
            if batch is None:  # nothing here yet; an empty list means bytes that end no event: read on
                await self._readable()

    async def _readable(self) -> None:
        """Wait on the event loop until the socket has bytes or an end, within the read timeout."""
        import asyncio

        self._waiter = asyncio.get_running_loop().create_future()
        try:
            ready = await _ready(self.stream._fileno(), self._timeout, self._waiter)
        finally:
            self._waiter = None
        if not ready:
            raise self.stream._timed_out()

    @property
    def response(self) -> Response:
        """The HTTP response: ``status_code``, and ``headers`` in any case."""
        return self.stream.response

    @property
    def headers(self) -> dict[str, str]:
        """The response headers (names in any case: ``stream.headers["X-Request-Id"]``)."""
        return self.stream.headers

    def __aiter__(self) -> AsyncStream[_T]:
        return self

    async def __anext__(self) -> _T:
        chunk = next(self._pending, _END)
        while chunk is _END:
            if self._cut_off:  # ending quietly here would pass a cut-off answer for a whole one
                raise APIConnectionError("The stream was closed when a read of it was cancelled (by a timeout?).")
            try:
                batch = await self._next_batch()
            except BaseException as exc:
                if _is_cancellation(exc):  # a task cancelled, or a per-chunk wait_for that ran out
                    self._cut_off = True
                    self.stream.close()
                raise
            if batch is _END:
                raise StopAsyncIteration
            self._pending = iter(batch)
            chunk = next(self._pending, _END)
        return chunk  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        self._pending = iter(())
        self._cut_off = False  # closed on purpose: reading on just ends
        if self._waiter is not None:
            _wake(self._waiter)  # a read waiting in another task goes on, to the end
        self.stream.close()

    close = aclose

    async def __aenter__(self) -> AsyncStream[_T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncAPIResponse(_Generic[_T]):
    """The async ``APIResponse``: the same attributes; ``parse()``, ``read()``, ``text()``, ``json()`` are awaited."""

    def __init__(self, response: _Response, call: _Call, client: AsyncTogether) -> None:
        self._sync: APIResponse[_T] = APIResponse(response, call)
        self._client = client
        self.http_response = self._sync.http_response
        self.retries_taken = self._sync.retries_taken

    headers = property(lambda self: self._sync.headers)
    status_code = property(lambda self: self._sync.status_code)
    http_request = property(lambda self: self._sync.http_request)
    url = property(lambda self: self._sync.url)
    method = property(lambda self: self._sync.method)
    http_version = property(lambda self: self._sync.http_version)
    elapsed = property(lambda self: self._sync.elapsed)
    request_id = property(lambda self: self._sync.request_id)
    is_closed = property(lambda self: self._sync.is_closed)

    @property
    def content(self) -> bytes:
        """The body, once read (``await response.read()``)."""
        content = self._sync._response.content
        if content is None:
            raise RuntimeError("the body has not been read yet: await response.read() first")
        return content

    async def parse(self, *, to: Any = None) -> _T:
        result = await self._on_pool(functools.partial(self._sync.parse, to=to))
        return AsyncStream(result, self._client) if isinstance(result, Stream) else result  # type: ignore[return-value]

    async def read(self) -> bytes:
        return await self._on_pool(self._sync.read)  # type: ignore[no-any-return]

    async def text(self) -> str:
        return str(await self._on_pool(lambda: self._sync.text))

    async def json(self) -> Any:
        return await self._on_pool(self._sync.json)

    async def close(self) -> None:
        self._sync.close()

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        async for piece in self._iterate(self._sync.iter_bytes()):
            yield piece

    async def iter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        async for piece in self._iterate(self._sync.iter_text()):
            yield piece

    async def iter_lines(self) -> AsyncIterator[str]:
        async for line in self._iterate(self._sync.iter_lines()):
            yield line

    async def _iterate(self, iterator: Iterator[Any]) -> AsyncIterator[Any]:
        try:
            while True:
                item = await self._on_pool(next, iterator, _END)
                if item is _END:
                    return
                yield item
        finally:
            self._sync.close()

    async def _on_pool(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._sync._response.content is not None and function is not next:  # read already: nothing can wait
            return function(*args)
        return await self._client._run(None, function, *args)

    def __repr__(self) -> str:
        return repr(self._sync).replace("APIResponse", "AsyncAPIResponse", 1)


class _AsyncResponseContextManager:
    """What the async ``with_streaming_response.create()`` returns: ``async with`` sends and closes."""

    def __init__(self, client: AsyncTogether, call: _Call) -> None:
        self._client = client
        self._call = call
        self._response: AsyncAPIResponse[Any] | None = None

    async def __aenter__(self) -> AsyncAPIResponse[Any]:
        response = await self._client._send(self._call, False)
        self._response = AsyncAPIResponse(response, self._call, self._client)
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            await self._response.close()

    def __await__(self) -> Generator[Any, None, AsyncAPIResponse[Any]]:
        return self.__aenter__().__await__()  # awaited instead: the caller closes it


class _AsyncRawResource:
    """The async ``with_raw_response`` / ``with_streaming_response`` of a resource."""

    def __init__(self, resource: _AsyncResource, *, streaming: bool) -> None:
        self._resource = resource
        self._streaming = streaming

    def create(self, **arguments: Any) -> Any:
        """The same arguments as the resource's ``create()``; await it (or ``async with`` it when streaming)."""
        call = self._resource._sync._prepare(arguments)
        client = self._resource._client
        if self._streaming:
            return _AsyncResponseContextManager(client, call)
        return self._raw(client, call)

    @staticmethod
    async def _raw(client: AsyncTogether, call: _Call) -> AsyncAPIResponse[Any]:
        return AsyncAPIResponse(await client._send(call, True), call, client)


class _AsyncRawClient:
    def __init__(self, client: AsyncTogether, *, streaming: bool) -> None:
        self.chat = _RawChat(_AsyncRawResource(client.chat.completions, streaming=streaming))  # type: ignore[arg-type]
        self.completions = _AsyncRawResource(client.completions, streaming=streaming)


def _signature_of(sync: Callable[..., Any]) -> Callable[[_F], _F]:
    """Give an async method the keyword signature (and help) of its sync twin, which checks its arguments."""

    def decorate(method: _F) -> _F:
        method.__wrapped__ = sync  # type: ignore[attr-defined]  # what inspect.signature() and help() show
        return method

    return decorate


class _AsyncResource:
    """An async resource: the sync one's checks, with the call run on the client's pool."""

    def __init__(self, client: AsyncTogether, sync: _Resource) -> None:
        self._client = client
        self._sync = sync

    @property
    def with_raw_response(self) -> _AsyncRawResource:
        """This resource, with a ``create()`` to await that gives the HTTP response."""
        return _AsyncRawResource(self, streaming=False)

    @property
    def with_streaming_response(self) -> _AsyncRawResource:
        """This resource, with a ``create()`` to ``async with`` over the unread response."""
        return _AsyncRawResource(self, streaming=True)


class AsyncChatCompletions(_AsyncResource):
    """``client.chat.completions`` of AsyncTogether: the same parameters as the sync ``create``."""

    def __init__(self, client: AsyncTogether) -> None:
        super().__init__(client, client._sync.chat.completions)

    if TYPE_CHECKING:

        @overload
        async def create(
            self, *, messages: _Messages, model: str, stream: Literal[False] = False, **params: Unpack[_ChatParams]
        ) -> ChatCompletionResponse: ...
        @overload
        async def create(
            self, *, messages: _Messages, model: str, stream: Literal[True], **params: Unpack[_ChatParams]
        ) -> AsyncStream[ChatCompletionChunk]: ...
        @overload
        async def create(
            self, *, messages: _Messages, model: str, stream: bool, **params: Unpack[_ChatParams]
        ) -> ChatCompletionResponse | AsyncStream[ChatCompletionChunk]: ...

    @_signature_of(ChatCompletions.create)
    async def create(self, **arguments: Any) -> ChatCompletionResponse | AsyncStream[ChatCompletionChunk]:
        """Create a chat completion; see ``ChatCompletions.create`` for the parameters."""
        return await self._client._execute(self._sync._prepare(arguments))  # type: ignore[no-any-return]

    async def parse(
        self, *, messages: _Messages, model: str, response_format: Any, **params: Unpack[_ParseParams]
    ) -> ChatCompletionResponse:
        """Create a chat completion parsed into ``response_format``; see ``ChatCompletions.parse``."""
        arguments = _parse_arguments(messages, model, response_format, params)
        completion = await self._client._execute(self._sync._prepare(arguments))
        return _with_parsed(completion, response_format)  # type: ignore[no-any-return]


class AsyncChat:
    """``client.chat`` of AsyncTogether."""

    def __init__(self, client: AsyncTogether) -> None:
        self.completions = AsyncChatCompletions(client)


class AsyncCompletions(_AsyncResource):
    """``client.completions`` of AsyncTogether: the same parameters as the sync ``create``."""

    def __init__(self, client: AsyncTogether) -> None:
        super().__init__(client, client._sync.completions)

    if TYPE_CHECKING:

        @overload
        async def create(
            self, *, model: str, prompt: str, stream: Literal[False] = False, **params: Unpack[_CompletionParams]
        ) -> CompletionResponse: ...
        @overload
        async def create(
            self, *, model: str, prompt: str, stream: Literal[True], **params: Unpack[_CompletionParams]
        ) -> AsyncStream[CompletionChunk]: ...
        @overload
        async def create(
            self, *, model: str, prompt: str, stream: bool, **params: Unpack[_CompletionParams]
        ) -> CompletionResponse | AsyncStream[CompletionChunk]: ...

    @_signature_of(Completions.create)
    async def create(self, **arguments: Any) -> CompletionResponse | AsyncStream[CompletionChunk]:
        """Create a text completion; see ``Completions.create`` for the parameters."""
        return await self._client._execute(self._sync._prepare(arguments))  # type: ignore[no-any-return]


# -- Multimodal helpers -------------------------------------------------------

#: What makes a source a URL, sent as it is, rather than a file to read.
_URL_PREFIXES: Final = ("http://", "https://", "data:")
#: The first bytes of common image and video files, and their MIME types.
_MAGIC_TYPES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"\x1aE\xdf\xa3", "video/webm"),
)


def _sniff_mime_type(data: bytes) -> str | None:
    """The MIME type of common image and video files, from their first bytes."""
    for magic, mime_type in _MAGIC_TYPES:
        if data.startswith(magic):
            return mime_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":  # ISO media: the brand tells image from video
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"heim", b"heis"):
            return "image/heic"
        return "video/quicktime" if brand[:2] == b"qt" else "video/mp4"
    return None


def file_to_data_url(source: str | os.PathLike[str] | bytes, mime_type: str | None = None) -> str:
    """A ``data:`` URL holding a local file (or raw bytes), with its MIME type.

    The type comes from ``mime_type``, else the file's first bytes, else its
    extension; a file of unknown type raises ValueError.
    """
    import base64
    import mimetypes

    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), None
    else:
        name = os.fspath(source)
        with open(name, "rb") as file:
            data = file.read()
    mime_type = mime_type or _sniff_mime_type(data) or (mimetypes.guess_type(name)[0] if name else None)
    if not mime_type:
        raise ValueError(f"cannot tell the MIME type of {name or 'these bytes'}; pass mime_type=")
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def _url_of(source: str | os.PathLike[str] | bytes, mime_type: str | None) -> str:
    if isinstance(source, str) and source.startswith(_URL_PREFIXES):
        return source
    return file_to_data_url(source, mime_type)


def image_part(
    source: str | os.PathLike[str] | bytes, *, detail: str | None = None, mime_type: str | None = None
) -> dict[str, Any]:
    """An ``image_url`` content part from a URL, a local file or bytes::

    {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part("cat.png")]}
    """
    image_url: dict[str, Any] = {"url": _url_of(source, mime_type)}
    if detail is not None:
        image_url["detail"] = detail
    return {"type": "image_url", "image_url": image_url}


def video_part(source: str | os.PathLike[str] | bytes, *, mime_type: str | None = None) -> dict[str, Any]:
    """A ``video_url`` content part from a URL, a local file or bytes."""
    return {"type": "video_url", "video_url": {"url": _url_of(source, mime_type)}}


# -- Command line -------------------------------------------------------------

#: The command line's model when neither -m nor TOGETHER_MODEL names one.
DEFAULT_CLI_MODEL: Final = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
#: What -o may not set: the command sets them itself.
_CLI_SET_KEYS: Final = frozenset({"messages", "prompt", "stream"})


def _cli_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="together-lite",
        description="Chat with, or complete text using, a Together AI model. Needs TOGETHER_API_KEY.",
    )
    parser.add_argument("--version", action="version", version=f"together_lite {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands_help = (
        ("chat", "chat with a model, streaming its answer; with no prompt on a terminal, a conversation"),
        ("complete", "complete a text prompt"),
    )
    for name, help_text in commands_help:
        command = commands.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        command.add_argument("prompt", nargs="?", help="the prompt; piped input is sent before it ('-': stdin only)")
        model_help = f"model name (default: $TOGETHER_MODEL, else {DEFAULT_CLI_MODEL})"
        command.add_argument("-m", "--model", type=_cli_text, help=model_help)
        if name == "chat":
            command.add_argument("-s", "--system", type=_cli_text, help="a system message")
            command.add_argument(
                "--image", action="append", default=[], metavar="PATH_OR_URL", help="add an image (repeatable)"
            )
        command.add_argument("--max-tokens", type=_cli_count(1), help="the most tokens to generate")
        command.add_argument("--temperature", type=_cli_number, help="sampling temperature")
        command.add_argument("--top-p", type=_cli_number, help="nucleus sampling threshold")
        command.add_argument("--stop", action="append", metavar="TEXT", help="a stop sequence (repeatable)")
        command.add_argument(
            "-o", "--option", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
            help="any other body parameter; VALUE is read as JSON when it is JSON (-o top_k 40) (repeatable)",
        )  # fmt: skip
        command.add_argument("--max-retries", type=_cli_count(0), help="retries after a failed attempt (default 5)")
        command.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
        command.add_argument("--json", action="store_true", help="print the server's answer as JSON")
        command.add_argument("--usage", action="store_true", help="print tokens and speed to stderr after the answer")
        command.add_argument("--version", action="version", version=f"together_lite {__version__}")
    return parser


def _cli_text(text: str) -> str:
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _cli_number(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value - value != 0:  # not a number, or infinite
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _cli_count(minimum: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
        return value

    count.__name__ = "number"  # what argparse calls the type in its messages
    return count


def _cli_json_value(text: str) -> Any:
    """An -o value: JSON when it parses as JSON (40, true, {"type": "json_object"}), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _cli_prompt(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The prompt: piped input, then the argument, joined as llm joins them; None starts a conversation."""
    prompt = None if args.prompt == "-" else args.prompt
    if args.prompt == "-" or not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped.strip():
            prompt = piped if prompt is None else f"{piped} {prompt}"
        elif prompt is None:
            parser.error("the prompt on stdin is empty")
    if prompt is None and not (args.command == "chat" and sys.stdin.isatty()):
        parser.error("give a PROMPT, or pipe one on stdin")
    if prompt is None and (args.json or args.image):
        parser.error(f"{'--json' if args.json else '--image'} needs a PROMPT")
    return prompt


def _cli_request(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``create()`` that the options give; the prompt is added later."""
    request: dict[str, Any] = {
        "model": args.model or os.environ.get("TOGETHER_MODEL") or DEFAULT_CLI_MODEL,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "stop": args.stop,
    }
    for key, value in args.option:
        if key in _CLI_SET_KEYS or not key.strip():
            parser.error(f"-o {key!r}: not an option to set (the command sets messages, prompt and stream)")
        request[key] = _cli_json_value(value)
    request["stream"] = not (args.no_stream or args.json)
    return request


def _cli_images(parser: argparse.ArgumentParser, images: list[str]) -> list[dict[str, Any]]:
    parts = []
    for image in images:
        try:
            parts.append(image_part(image))
        except (OSError, ValueError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc).partition(";")[0]  # not the API's "pass mime_type="
            parser.error(f"--image {image}: {detail}")
    return parts


def _cli_messages(args: argparse.Namespace, images: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    content: Any = [{"type": "text", "text": prompt}, *images] if images else prompt
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [*system, {"role": "user", "content": content}]


class _CliTimer:
    """When an answer started, gave its first text and ended, and its token counts: what --usage prints."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_text: float | None = None
        self.usage: Any = None

    def saw(self, chunk: Any) -> None:
        if self.first_text is None:
            self.first_text = time.monotonic()
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage

    def report(self) -> str:
        ended = time.monotonic()
        first = self.first_text or ended
        usage = self.usage
        tokens_in = getattr(usage, "prompt_tokens", None)
        tokens_out = getattr(usage, "completion_tokens", None)
        parts = [
            f"{'?' if tokens_in is None else tokens_in} tokens in, {'?' if tokens_out is None else tokens_out} out"
        ]
        parts.append(f"first token after {first - self.started:.2f} s")
        if tokens_out and ended > first:
            parts.append(f"{tokens_out / (ended - first):.1f} tokens/s")
        elif tokens_out:
            parts.append(f"{tokens_out / max(ended - self.started, 1e-9):.1f} tokens/s")
        return "; ".join(parts)


def _cli_answer(client: Together, args: argparse.Namespace, request: dict[str, Any]) -> str:
    """Make one request and print its answer as it arrives; the answer's text."""
    timer = _CliTimer()
    endpoint = client.chat.completions if args.command == "chat" else client.completions
    result = endpoint.create(**request)
    out = sys.stdout
    if args.json:
        out.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return ""
    if isinstance(result, Stream):
        pieces = []
        with result:
            try:
                for chunk in result:
                    timer.saw(chunk)
                    piece = _cli_piece(args.command, chunk)
                    if piece:
                        pieces.append(piece)
                        out.write(piece)
                        out.flush()
            except TogetherException:
                out.write("\n")  # end the line of text before the error line
                raise
        out.write("\n")
        text = "".join(pieces)
    else:
        timer.saw(result)
        choice = result.choices[0]
        text = (choice.message.content if args.command == "chat" else choice.text) or ""
        out.write(text + "\n")
    if args.usage:
        out.flush()
        sys.stderr.write(timer.report() + "\n")
    return text


def _cli_piece(command: str, chunk: Any) -> str | None:
    """The new text in a stream chunk, if any."""
    if not chunk.choices:
        return None
    choice = chunk.choices[0]
    if command == "complete":
        return choice.text  # type: ignore[no-any-return]
    return choice.delta.content if choice.delta is not None else None


def _cli_conversation(client: Together, args: argparse.Namespace, request: dict[str, Any]) -> None:
    """``together-lite chat`` on a terminal: a conversation, its history sent with each turn."""
    with contextlib.suppress(ImportError):  # Windows has none
        import readline  # noqa: F401  (line editing and history for input())
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    sys.stderr.write(
        f"Chatting with {request['model']}. /reset starts over; exit or Ctrl-D leaves; Ctrl-C stops an answer.\n"
    )
    while True:
        try:
            line = input("> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell does
            sys.stdout.write("\n")
            continue
        text = line.strip()
        if text in ("exit", "quit", "/exit", "/quit"):
            return
        if text in ("/reset", "/clear"):
            history = list(system)
            sys.stderr.write("(the conversation starts over)\n")
            continue
        if not text:
            continue
        turn = [*history, {"role": "user", "content": line}]
        try:
            answer = _cli_answer(client, args, {**request, "messages": turn})
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.stderr.write("(stopped)\n")
            continue
        except TogetherException as exc:
            sys.stdout.flush()
            sys.stderr.write(_cli_error_line(exc) + "\n")
            continue
        history = [*turn, {"role": "assistant", "content": answer}]


def _cli_error_line(exc: TogetherException) -> str:
    message = exc.message
    if isinstance(exc, APIStatusError) and exc.status_code is not None:
        prefix = f"Error code: {exc.status_code} - "
        message = f"{exc.status_code} {message[len(prefix) :] if message.startswith(prefix) else message}"
    return "error: " + " ".join(message.split())  # one line, whatever the server's message holds


def _cli_retry_note(reason: str, delay: float, retry: int, max_retries: int) -> None:
    sys.stderr.write(f"{reason}; retrying in {delay:.1f} s ({retry}/{max_retries})\n")
    sys.stderr.flush()


def _cli_warning(message: Any, category: Any, *rest: Any, **more: Any) -> None:
    sys.stderr.write(f"warning: {message}\n")


def _cli_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the arguments (usage errors exit 2), make the client, and answer or converse."""
    prompt = _cli_prompt(parser, args)
    request = _cli_request(parser, args)
    images = _cli_images(parser, args.image) if args.command == "chat" else []
    with Together(max_retries=args.max_retries) as client:
        client._on_retry = _cli_retry_note
        if prompt is None:
            _cli_conversation(client, args, request)
        elif args.command == "complete":
            _cli_answer(client, args, {**request, "prompt": prompt})
        else:
            _cli_answer(client, args, {**request, "messages": _cli_messages(args, images, prompt)})


def main(argv: Sequence[str] | None = None) -> int:
    """The ``together-lite`` command: ``chat`` and ``complete``. Returns the exit status."""
    import warnings

    parser = _cli_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _cli_warning  # one line, without Python's source quote
            _cli_run(parser, args)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    except TogetherException as exc:
        sys.stdout.flush()
        sys.stderr.write(_cli_error_line(exc) + "\n")
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a pipeline expects
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
        return 141
    except (OSError, ValueError, TypeError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


# -- Module paths -------------------------------------------------------------
#
# The SDKs' module paths, for code that imports from them: the v1 SDK's
# ``together.error`` and ``together.types.chat_completions``, together 3.x's
# ``together.types.chat`` and the rest. Each is a view of the classes above.


def _module(name: str, names: Mapping[str, Any]) -> Any:
    """A module ``together_lite.<name>`` holding ``names``, importable by its dotted path."""
    module = type(sys)(f"{__name__}.{name}")
    module.__dict__.update(names)
    return sys.modules.setdefault(module.__name__, module)


def _module_paths() -> Any:
    """Register the module paths; returns ``together_lite.types``."""
    this = sys.modules[__name__]
    public = {name: getattr(this, name) for name in __all__}
    message_param: Any = dict  # the request TypedDicts of the SDKs: plain dicts here
    params = {
        name: message_param
        for name in (
            "ChatCompletionMessageParam", "ChatCompletionSystemMessageParam", "ChatCompletionUserMessageParam",
            "ChatCompletionAssistantMessageParam", "ChatCompletionToolMessageParam", "ChatCompletionToolParam",
            "CompletionCreateParams", "ToolsParam", "ToolChoiceParam",
        )
    }  # fmt: skip
    chat_names = {
        "ChatCompletion": ChatCompletionResponse, "ChatCompletionChunk": ChatCompletionChunk,
        "ChatCompletionMessage": ChatMessage, "ChatCompletionUsage": Usage, "ChatCompletionWarning": InferenceWarning,
        "ChatCompletionPromptItem": PromptPart, "ChatCompletionMessageToolCall": ToolCall, **params,
    }  # fmt: skip
    views: dict[str, dict[str, Any]] = {
        "chat.chat_completion": {"ChatCompletion": ChatCompletionResponse, "Choice": ChatChoice},
        "chat.chat_completion_chunk": {"ChatCompletionChunk": ChatCompletionChunk, "Choice": ChatChoiceDelta,
                                       "ChoiceDelta": ChatDelta},
        "chat.chat_completion_message": {"ChatCompletionMessage": ChatMessage},
        "chat.chat_completion_usage": {"ChatCompletionUsage": Usage},
        "chat.chat_completion_warning": {"ChatCompletionWarning": InferenceWarning},
        "completion": {"Completion": CompletionResponse, "Choice": CompletionChoice},
        "completion_chunk": {"CompletionChunk": CompletionChunk, "Choice": CompletionChoiceDelta,
                             "ChoiceDelta": ChatDelta, "Token": CompletionToken},
        "log_probs": {"LogProbs": Logprobs},
        "tool_choice": {"ToolChoice": ToolCall, "Function": FunctionCall},
    }  # fmt: skip
    types_module = _module("types", {**public, **params, "Completion": CompletionResponse, "LogProbs": Logprobs,
                                     "ToolChoice": ToolCall, "ChatCompletion": ChatCompletionResponse})  # fmt: skip
    chat = _module("types.chat", chat_names)
    types_module.chat = chat
    for name, names in views.items():
        parent, _, leaf = name.rpartition(".")
        setattr(chat if parent else types_module, leaf, _module(f"types.{name}", names))
    for v1_name in ("chat_completions", "completions", "common"):  # the v1 SDK's, whose names are all here
        setattr(types_module, v1_name, sys.modules.setdefault(f"{__name__}.types.{v1_name}", this))
    return types_module


error = sys.modules.setdefault(f"{__name__}.error", sys.modules[__name__])
types = _module_paths()

_configure_logging(os.environ.get("TOGETHER_LOG"))

if __name__ == "__main__":
    sys.exit(main())
