"""The apps' own JWT check (PyJWT), counted: a test knows each token was validated once per request, by the app alone."""

import threading
from dataclasses import dataclass

import jwt

SECRET = "auth-asgi-test-secret-of-at-least-32-bytes"
validations = {"count": 0}
_lock = threading.Lock()


@dataclass
class User:
    """The app's user, with an e-mail that must never reach a span."""

    id: int
    role: str
    is_admin: bool
    email: str

    @property
    def is_authenticated(self) -> bool:  # Starlette's BaseUser interface, which AuthenticationMiddleware's users follow
        return True

    @property
    def display_name(self) -> str:
        return self.email


def user_from_token(token: str) -> User:
    with _lock:
        validations["count"] += 1
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    return User(int(claims["sub"]), claims["role"], claims["is_admin"], claims["email"])


class Pair:
    """Holds the first of two requests until the second arrives (one event loop): two users' requests in flight at once."""

    def __init__(self) -> None:
        self.waiting = None

    async def wait(self) -> None:
        import asyncio

        if self.waiting is None:
            self.waiting = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.waiting, 10)
        else:
            waiting, self.waiting = self.waiting, None
            waiting.set_result(None)
