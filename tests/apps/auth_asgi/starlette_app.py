"""A Starlette app with ``AuthenticationMiddleware`` and a JWT backend of its own, and no otel_segments anywhere."""

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from tokens import Pair, user_from_token, validations

tracer = trace.get_tracer("starlette_app")
pair = Pair()


class JWTAuthBackend(AuthenticationBackend):
    async def authenticate(self, conn):
        header = conn.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        return AuthCredentials(["authenticated"]), user_from_token(header.removeprefix("Bearer "))


async def health(request):
    return PlainTextResponse("ok")


async def work(request):
    with tracer.start_as_current_span("work"):
        if request.query_params.get("pair"):
            await pair.wait()
    with tracer.start_as_current_span("after-work"):
        return PlainTextResponse("ok")


async def later():
    with tracer.start_as_current_span("background"):  # after the response went out: still the request's user
        pass


async def background(request):
    return PlainTextResponse("ok", background=BackgroundTask(later))


async def stats(request):
    return JSONResponse({"validations": validations["count"]})


app = Starlette(
    routes=[Route("/health", health), Route("/work", work), Route("/background", background), Route("/stats", stats)],
    middleware=[Middleware(AuthenticationMiddleware, backend=JWTAuthBackend())],
)
