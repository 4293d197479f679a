"""A FastAPI app whose JWT check is a dependency of its own; the one line for otel_segments is marked."""

from typing import Optional

from fastapi import Depends, FastAPI, Header
from fastapi.responses import PlainTextResponse
from opentelemetry import trace
from tokens import Pair, User, user_from_token, validations

from otel_segments.integrations.fastapi import traced_user

tracer = trace.get_tracer("fastapi_app")
pairing = Pair()
app = FastAPI()


def get_current_user(authorization: Optional[str] = Header(None)) -> Optional[User]:  # noqa: UP045 - FastAPI reads it
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return user_from_token(authorization.removeprefix("Bearer "))


@app.get("/health", response_class=PlainTextResponse)
async def health():
    return "ok"


@app.get("/work", response_class=PlainTextResponse)
async def work(pair: int = 0, user=Depends(traced_user(get_current_user, auth_method="jwt"))):  # noqa: B008 - the one line
    with tracer.start_as_current_span("work"):
        if pair:
            await pairing.wait()
    with tracer.start_as_current_span("after-work"):
        return "ok"


@app.get("/stats")
async def stats():
    return {"validations": validations["count"]}
