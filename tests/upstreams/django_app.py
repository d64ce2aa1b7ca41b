"""A minimal Django project in one file, on gunicorn: what `request.META`, `request.headers`,
`request.is_secure()` and `request.get_host()` report behind a proxy Django is told to trust.

Run: gunicorn --chdir tests/upstreams django_app:application.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import unquote

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="compatibility-matrix-only-not-a-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    # The settings a Django deployment behind a TLS-terminating proxy is told to use.
    SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    USE_X_FORWARDED_HOST=True,
    USE_X_FORWARDED_PORT=True,
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    LOGGING_CONFIG=None,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402 - settings first
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

PATTERN = b"0123456789abcdef" * 4096


def _mark(response: HttpResponse | StreamingHttpResponse) -> HttpResponse | StreamingHttpResponse:
    response["X-Upstream"] = "django"
    return response


def whoami(request: HttpRequest, prefix: str) -> HttpResponse | StreamingHttpResponse:
    email = request.META.get("HTTP_X_USER_EMAIL")
    return _mark(JsonResponse({
        "user_id": request.META.get("HTTP_X_USER_ID"),
        "headers_user_id": request.headers.get("X-User-Id"),
        "email": unquote(email) if email is not None else None,
        "session_id": request.META.get("HTTP_X_SESSION_ID"),
        "scheme": request.scheme,
        "secure": request.is_secure(),
        "host": request.get_host(),
        "remote_addr": request.META.get("REMOTE_ADDR"),
        "script_root": request.META.get("SCRIPT_NAME", ""),
        "meta": {k: v for k, v in request.META.items() if k.startswith("HTTP_")},
    }))  # fmt: skip


def upload(request: HttpRequest, prefix: str) -> HttpResponse | StreamingHttpResponse:
    digest, length = hashlib.sha256(), 0
    while chunk := request.read(65536):
        digest.update(chunk)
        length += len(chunk)
    return _mark(JsonResponse({"length": length, "sha256": digest.hexdigest()}))


def download(request: HttpRequest, prefix: str) -> HttpResponse | StreamingHttpResponse:
    size = int(request.GET["bytes"])

    def body() -> Iterator[bytes]:
        left = size
        while left > 0:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    response = StreamingHttpResponse(body(), content_type="application/octet-stream")
    response["Content-Length"] = str(size)
    return _mark(response)


def status(request: HttpRequest, prefix: str, code: int) -> HttpResponse | StreamingHttpResponse:
    return _mark(JsonResponse({"upstream_error": code}, status=code))


def crash(request: HttpRequest, prefix: str) -> HttpResponse:
    raise RuntimeError("crash on purpose")


urlpatterns = [
    path("<str:prefix>/whoami", whoami),
    path("<str:prefix>/upload", upload),
    path("<str:prefix>/download", download),
    path("<str:prefix>/status/<int:code>", status),
    path("<str:prefix>/crash", crash),
]

application = get_wsgi_application()
