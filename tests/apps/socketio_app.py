"""A Flask-SocketIO app as production apps run one: background tasks, rooms, events, logging, its own database work.

Served by gunicorn's ``eventlet`` or ``gevent`` worker under ``opentelemetry-instrument``, with
``SOCKETIO_ASYNC_MODE`` naming the worker's library, as such apps do (left to guess, Flask-SocketIO
takes eventlet whenever it is installed, even in a gevent worker). What it adds to a plain Flask
app is what the field report (issue 20) found made the difference: Flask-SocketIO's
server, a background task started with ``socketio.start_background_task`` that
wakes every 200 ms, queries the app's database with SQLAlchemy, logs and emits to
every connected client; and connected clients, whose ``ping`` event answers with
the user the request ran as. ``GET /work/<user>`` runs as that user
(the Flask integration's ``init_app``) and answers the async mode, so a test sees
which one served it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, jsonify, request
from flask_socketio import SocketIO, emit
from sqlalchemy import create_engine, text

from otel_segments.integrations.flask import init_app

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("socketio_app")

app = Flask(__name__)
init_app(app, user_loader=lambda: {"user_id": request.view_args["user"], "role": "user"} if request.view_args else None)
socketio = SocketIO(app, async_mode=os.environ["SOCKETIO_ASYNC_MODE"])
# the app's own engine on its own database (the same file the job reads), as Flask-SQLAlchemy would make it
engine = create_engine(os.environ["APP_DATABASE_URL"])
_ticker: Any = None


def tick() -> None:
    """The app's background task: a query, a log line and an event to every client, five times a second."""
    n = 0
    while True:
        with engine.connect() as conn:
            users = conn.execute(text("SELECT count(*) FROM users")).scalar()
        if n % 25 == 0:
            logger.info("tick %d: %d users", n, users)
        socketio.emit("tick", {"n": n, "users": users})
        n += 1
        socketio.sleep(0.2)


@app.before_request
def _start_ticker() -> None:
    global _ticker
    if _ticker is None:
        _ticker = socketio.start_background_task(tick)


@app.get("/work/<user>")
def work(user: str) -> Any:
    return jsonify(user=user, pid=os.getpid(), mode=socketio.async_mode)


@socketio.on("ping")
def ping(data: dict[str, Any]) -> None:
    emit("pong", {"n": data.get("n"), "mode": socketio.async_mode})
