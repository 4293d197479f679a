"""A small TimeTracker-like app: Flask + Flask-SQLAlchemy + Flask-Login on TimeTracker's default schema.

Run it under OpenTelemetry's launcher, with otel_segments installed:

    OTEL_SERVICE_NAME=timetracker OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \\
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_EXPORTER_OTLP_TOKEN=dev-token \\
    opentelemetry-instrument python examples/timetracker/app.py --port 5000

Log in (``curl -c jar -d username=alice -d password=alice http://localhost:5000/login``)
and every span of your requests carries ``user.id``, ``app.user.role``,
``app.user.is_admin`` and ``app.user.auth_method``; never the username or email.
The database is ``TIMETRACKER_DATABASE_URL`` (default: ``timetracker.db`` in the current
directory); demo users alice (admin, oidc) and bob (user, local) are created on start.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask, abort, jsonify, request
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_sqlalchemy import SQLAlchemy
from opentelemetry import trace
from werkzeug.security import check_password_hash, generate_password_hash

from otel_segments.integrations.flask import init_app as init_otel_segments

db = SQLAlchemy()
login_manager = LoginManager()
tracer = trace.get_tracer("timetracker")

ADMIN_ROLES = frozenset({"admin", "super_admin"})


def utcnow() -> datetime:
    """Naive UTC, as TimeTracker stores it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


user_roles = db.Table(
    "user_roles",
    db.Column("user_id", db.Integer, db.ForeignKey("users.id"), primary_key=True),
    db.Column("role_id", db.Integer, db.ForeignKey("roles.id"), primary_key=True),
)


class Role(db.Model):
    __tablename__ = "roles"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(50), unique=True, nullable=False)


class User(UserMixin, db.Model):
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(80), unique=True, nullable=False)
    email = db.Column(db.String(200))
    full_name = db.Column(db.String(200))
    password_hash = db.Column(db.String(255))
    role = db.Column(db.String(20), nullable=False, default="user")
    auth_provider = db.Column(db.String(20), nullable=False, default="local")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_login = db.Column(db.DateTime)
    roles = db.relationship(Role, secondary=user_roles, lazy="selectin")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" or any(r.name in ADMIN_ROLES for r in self.roles)


class Project(db.Model):
    __tablename__ = "projects"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(200), nullable=False)
    status = db.Column(db.String(20), nullable=False, default="active")


class Task(db.Model):
    __tablename__ = "tasks"
    id = db.Column(db.Integer, primary_key=True)
    project_id = db.Column(db.Integer, db.ForeignKey("projects.id"), nullable=False)
    name = db.Column(db.String(200), nullable=False)
    assigned_to = db.Column(db.Integer, db.ForeignKey("users.id"))
    status = db.Column(db.String(20), nullable=False, default="todo")


class TimeEntry(db.Model):
    __tablename__ = "time_entries"
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"), nullable=False, index=True)
    project_id = db.Column(db.Integer, db.ForeignKey("projects.id"))
    task_id = db.Column(db.Integer, db.ForeignKey("tasks.id"))
    start_time = db.Column(db.DateTime, nullable=False, default=utcnow)
    end_time = db.Column(db.DateTime)
    duration_seconds = db.Column(db.Integer)
    source = db.Column(db.String(20), nullable=False, default="manual")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "project_id": self.project_id,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat() if self.end_time else None,
            "source": self.source,
        }


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id))


def create_app(database_url: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("TIMETRACKER_SECRET_KEY", "dev-only-secret")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ.get(
        "TIMETRACKER_DATABASE_URL", f"sqlite:///{Path.cwd() / 'timetracker.db'}"
    )
    db.init_app(app)
    login_manager.init_app(app)
    init_otel_segments(app)  # after Flask-Login, so the user is known when it runs

    @app.post("/login")
    def login():
        user = db.session.execute(db.select(User).filter_by(username=request.form.get("username", ""))).scalar_one_or_none()
        if user is None or not check_password_hash(user.password_hash or "", request.form.get("password", "")):
            abort(401)
        login_user(user)
        user.last_login = utcnow()
        with tracer.start_as_current_span("timetracker.login"):
            db.session.commit()
        return jsonify(user_id=user.id)

    @app.post("/logout")
    @login_required
    def logout():
        logout_user()
        return jsonify(ok=True)

    @app.get("/entries")
    @login_required
    def list_entries():
        with tracer.start_as_current_span("timetracker.list_entries"):
            entries = db.session.execute(
                db.select(TimeEntry).filter_by(user_id=current_user.id).order_by(TimeEntry.start_time.desc())
            ).scalars()
            return jsonify([e.as_dict() for e in entries])

    @app.post("/timer/start")
    @login_required
    def start_timer():
        with tracer.start_as_current_span("timetracker.start_timer"):
            running = db.session.execute(
                db.select(TimeEntry).filter_by(user_id=current_user.id, end_time=None)
            ).scalar_one_or_none()
            if running is not None:
                return jsonify(running.as_dict()), 409
            entry = TimeEntry(user_id=current_user.id, project_id=request.form.get("project_id", type=int), source="auto")
            db.session.add(entry)
            db.session.commit()
            return jsonify(entry.as_dict()), 201

    @app.post("/timer/stop")
    @login_required
    def stop_timer():
        entry = db.session.execute(db.select(TimeEntry).filter_by(user_id=current_user.id, end_time=None)).scalar_one_or_none()
        if entry is None:
            abort(404)
        entry.end_time = utcnow()
        entry.duration_seconds = int((entry.end_time - entry.start_time).total_seconds())
        db.session.commit()
        return jsonify(entry.as_dict())

    @app.get("/health")
    def health():
        return jsonify(ok=True)

    with app.app_context():
        db.create_all()
        seed()
    return app


def seed() -> None:
    """Demo data, once: an admin who signs in with OIDC, a plain local user, one project with a task."""
    if db.session.execute(db.select(User).limit(1)).first() is not None:
        return
    admin_role = Role(name="admin")
    alice = User(
        username="alice",
        email="alice@example.com",
        full_name="Alice Admin",
        role="admin",
        auth_provider="oidc",
        password_hash=generate_password_hash("alice"),
        roles=[admin_role],
    )
    bob = User(
        username="bob",
        email="bob@example.com",
        full_name="Bob User",
        role="user",
        auth_provider="local",
        password_hash=generate_password_hash("bob"),
    )
    project = Project(name="Website")
    db.session.add_all([alice, bob, project])
    db.session.flush()
    db.session.add(Task(project_id=project.id, name="Landing page", assigned_to=bob.id, status="in_progress"))
    db.session.add(TimeEntry(user_id=bob.id, project_id=project.id, end_time=utcnow(), duration_seconds=0))
    db.session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    create_app().run(host=args.host, port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
