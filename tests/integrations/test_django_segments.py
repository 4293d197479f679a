"""A Django app gets segments with the built-in ``django`` mapping and one variable naming its activity table.

The site (``tests/apps/login_django``, no otel_segments code) runs under
``opentelemetry-instrument`` with ``OTEL_SEGMENTS_SCHEMA=django`` and
``OTEL_SEGMENTS_ACTIVITY_TABLE=shop_order:created_at``, its own SQLite database
as the segments' source, a real OTLP receiver and a local PostHog endpoint.
The superuser's ``is_admin`` must be ``true`` on his spans, in PostHog and in
the OTLP segment records alike (and the plain user's ``false`` everywhere), and
his role the one his first group names everywhere (the plain user has none).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import clean_env
from tests.integrations.test_zero_code import (
    DJANGO_RUNSERVER,
    _client,
    django_site,  # noqa: F401 - the fixture: the migrated site, its users and the superuser's orders
    serving,
)
from tests.receivers import Receiver
from tests.sinks.conftest import Capture, capture  # noqa: F401 - the local PostHog endpoint

TOKEN = "tok-django-segments-7c2"
API_KEY = "phc_django_segments"


def _env(folder: Path, receiver: Receiver, posthog: str) -> dict[str, str]:
    db = folder / "db.sqlite3"
    env = clean_env(
        OTEL_SERVICE_NAME="django-segments",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SEGMENTS_DATABASE_URL=f"sqlite:///{db}",
        OTEL_SEGMENTS_SCHEMA="django",
        OTEL_SEGMENTS_ACTIVITY_TABLE="shop_order:created_at",
        OTEL_SEGMENTS_REFRESH_INTERVAL="1000",
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=posthog,
        LOGIN_DJANGO_DB=str(db),
        DJANGO_SETTINGS_MODULE="djsite.settings",
    )
    env.pop("PYTHONPATH", None)
    return env


def _admin_everywhere(posthog_capture: Capture, receiver: Receiver, user_id: str) -> dict[str, Any]:
    """What PostHog, the OTLP segment records and the user's latest segmented span say ``is_admin`` and the role are."""
    posthog = [
        (e["properties"].get("$set", {}).get("is_admin"), e["properties"].get("$set", {}).get("role"))
        for e in posthog_capture.events()
        if e["distinct_id"] == user_id
    ]
    records = [
        (r.resource.get("app.user.is_admin"), r.resource.get("app.user.role"))
        for r in receiver.logs()
        if r.event_name == "app.user.segment" and r.resource.get("user.id") == user_id
    ]
    spans = [
        (s.attributes.get("app.user.is_admin"), s.attributes.get("app.user.role"))
        for s in receiver.spans()
        if s.attributes.get("user.id") == user_id and "app.user.engagement_level" in s.attributes
    ]
    return {"posthog": posthog[-1:], "otlp": records[-1:], "spans": spans[-1:]}


def test_django_app_gets_segments_with_the_builtin_mapping_and_admin_agrees(
    http_receiver: Receiver,
    capture: Capture,  # noqa: F811 - the fixture imported above
    django_site: tuple[Path, dict[str, str]],  # noqa: F811 - the fixture imported above
) -> None:
    folder, ids = django_site
    with serving(folder, DJANGO_RUNSERVER, _env(folder, http_receiver, capture.host)) as base:
        with _client(base, "client-ann") as ann, _client(base, "client-bo") as bo:
            assert ann.post("/login", data={"username": "ann"}).status_code == 200
            assert bo.post("/login", data={"username": "bo"}).status_code == 200
            deadline = time.monotonic() + 60
            want = {ids["ann"]: [(True, "editors")], ids["bo"]: [(False, None)]}
            while True:  # work until a refresh has delivered both users and their spans carry the segment
                assert ann.get("/work").status_code == 200 and bo.get("/work").status_code == 200
                seen = {uid: _admin_everywhere(capture, http_receiver, uid) for uid in want}
                if all(all(v == want[uid] for v in places.values()) for uid, places in seen.items()):
                    break
                assert time.monotonic() < deadline, seen
                time.sleep(0.2)
    [ann_event] = [e for e in capture.events() if e["distinct_id"] == ids["ann"]][:1]
    assert ann_event["properties"]["$set"]["engagement_level"] != "inactive", ann_event  # the orders are his activity
    for event in capture.events():
        assert "example.com" not in str(event) and "'ann'" not in str(event), event
