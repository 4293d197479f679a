import asyncio
import contextvars
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_segments import SuperPropertiesSpanProcessor, clear_user, current_user, set_user, user_context
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.properties import ProcessProperties, detect_process_properties

PROCESS = ProcessProperties(environment="staging", deployment_method="kubernetes", timezone="Europe/Berlin")


@pytest.fixture
def pipeline():
    exporter = InMemorySpanExporter()
    segments = SegmentCache(100)
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(PROCESS, segments))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter, segments
    provider.shutdown()


def attrs(exporter, name):
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return dict(span.attributes)


def test_exact_attributes_for_a_user(pipeline):
    tracer, exporter, _ = pipeline
    with user_context(42, role="admin", is_admin=True, auth_method="oidc", plan="pro"):
        tracer.start_span("s").end()
    assert attrs(exporter, "s") == {
        "user.id": "42",
        "user.roles": ("admin",),
        "app.user.role": "admin",
        "app.user.is_admin": True,
        "app.user.auth_method": "oidc",
        "app.user.plan": "pro",
        "app.timezone": "Europe/Berlin",
        "deployment.environment.name": "staging",
        "app.deployment.method": "kubernetes",
    }


def test_none_values_are_left_out_and_anonymous_spans_get_process_only(pipeline):
    tracer, exporter, _ = pipeline
    with user_context("u1", role=None, is_admin=None, auth_method=None, team=None):
        tracer.start_span("s").end()
    tracer.start_span("anon").end()
    assert attrs(exporter, "s") == {
        "user.id": "u1",
        "app.timezone": "Europe/Berlin",
        "deployment.environment.name": "staging",
        "app.deployment.method": "kubernetes",
    }
    assert "user.id" not in attrs(exporter, "anon")
    assert "None" not in repr(attrs(exporter, "s"))


def test_pii_keys_are_not_sent(pipeline, caplog):
    tracer, exporter, _ = pipeline
    with user_context(1, email="a@example.com", username="ann", full_name="Ann A", Name="Ann", team="x"):
        tracer.start_span("s").end()
    sent = attrs(exporter, "s")
    assert sent["app.user.team"] == "x"
    assert not any(k.lower().endswith(("email", "username", "full_name", "name")) for k in sent if k.startswith("app.user."))
    assert "a@example.com" not in repr(sent)


def test_hostile_values_never_raise_and_stay_valid(pipeline):
    tracer, exporter, _ = pipeline
    with user_context(
        b"\xffid",
        role=123,
        is_admin="yes",
        nested={"a": 1},
        nan=math.nan,
        huge_int=2**80,
        bad_text="\udcff",
        mixed=[1, "a"],
        tags=["a", None, "b"],
    ):
        tracer.start_span("s").end()
    sent = attrs(exporter, "s")
    assert sent["user.id"] == "\ufffdid"
    assert "app.user.is_admin" not in sent
    assert "app.user.nested" not in sent and "app.user.nan" not in sent and "app.user.mixed" not in sent
    assert sent["app.user.huge_int"] == str(2**80)
    assert sent["app.user.bad_text"].encode("utf-8")
    assert sent["app.user.tags"] == ("a", "b")


def test_none_or_empty_user_id_means_anonymous(pipeline):
    tracer, exporter, _ = pipeline
    for uid in (None, ""):
        with user_context(uid, role="admin"):
            assert current_user() is None
            tracer.start_span(f"s{uid!r}").end()
    assert all("user.id" not in dict(s.attributes) for s in exporter.get_finished_spans())


def test_segment_properties_from_cache(pipeline):
    tracer, exporter, segments = pipeline
    segments.put("7", {"engagement_level": "high", "is_power_user": True, "days_since_last_login": None, "role": "stale"})
    with user_context(7, role="admin"):
        tracer.start_span("s").end()
    sent = attrs(exporter, "s")
    assert sent["app.user.engagement_level"] == "high"
    assert sent["app.user.is_power_user"] is True
    assert "app.user.days_since_last_login" not in sent
    assert sent["app.user.role"] == "admin"  # what the request knows beats the last refresh


def test_segment_cache_is_bounded():
    cache = SegmentCache(3)
    for i in range(10):
        cache.put(str(i), {"n": i})
    assert len(cache) == 3
    assert cache.get("0") is None and cache.get("9") == {"app.user.n": 9}


def test_processor_never_raises(caplog):
    class Broken:
        def get(self, user_id):
            raise RuntimeError("boom")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(PROCESS, Broken()))  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caplog.set_level(logging.ERROR)
    with user_context(1):
        for _ in range(3):
            provider.get_tracer("t").start_span("s").end()
    assert len(exporter.get_finished_spans()) == 3
    assert len([r for r in caplog.records if "super properties" in r.getMessage()]) == 1


def test_decorator_sync_and_async(pipeline):
    tracer, exporter, _ = pipeline

    @user_context("d1", role="user")
    def sync():
        tracer.start_span("sync").end()

    @user_context("d2", role="user")
    async def coro():
        await asyncio.sleep(0)
        tracer.start_span("async").end()

    sync()
    asyncio.run(coro())
    assert attrs(exporter, "sync")["user.id"] == "d1"
    assert attrs(exporter, "async")["user.id"] == "d2"
    assert current_user() is None


def test_set_user_and_clear_user_restore_previous():
    outer = set_user("outer")
    inner = set_user("inner", role="admin")
    assert current_user().user_id == "inner"
    clear_user(inner)
    assert current_user().user_id == "outer"
    clear_user(outer)
    assert current_user() is None
    set_user("x")
    clear_user()
    assert current_user() is None


def test_thread_pool_needs_copied_context(pipeline):
    tracer, exporter, _ = pipeline
    with user_context("pool"), ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: tracer.start_span("lost").end()).result()
        ctx = contextvars.copy_context()
        pool.submit(ctx.run, lambda: tracer.start_span("kept").end()).result()
    assert "user.id" not in attrs(exporter, "lost")
    assert attrs(exporter, "kept")["user.id"] == "pool"


def test_no_cross_user_leak_under_threads_and_asyncio(pipeline):
    """32 threads and 32 asyncio tasks, each its own user, 10k spans: every span carries only its own user."""
    tracer, exporter, _ = pipeline
    spans_each = 10_000 // 64 + 1
    barrier = threading.Barrier(33)

    def worker(n: int) -> None:
        barrier.wait()
        with user_context(f"t{n}", role=f"role-t{n}", is_admin=n % 2 == 0, worker=n):
            for i in range(spans_each):
                with tracer.start_as_current_span(f"t{n}-{i}"):
                    pass

    async def task(n: int) -> None:
        with user_context(f"a{n}", role=f"role-a{n}", worker=n):
            for i in range(spans_each):
                with tracer.start_as_current_span(f"a{n}-{i}"):
                    await asyncio.sleep(0)

    async def all_tasks() -> None:
        await asyncio.gather(*(task(n) for n in range(32)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    barrier.wait()
    asyncio.run(all_tasks())
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    spans = exporter.get_finished_spans()
    assert len(spans) >= 10_000
    for span in spans:
        owner = span.name.split("-")[0]
        a = span.attributes
        assert a["user.id"] == owner, span.name
        assert a["app.user.role"] == f"role-{owner}"
        assert a["app.user.worker"] == int(owner[1:])


def test_process_properties_detection(tmp_path):
    docker = tmp_path / "dockerenv"
    assert detect_process_properties({}, str(docker)) == ProcessProperties("production", "native", "UTC")
    docker.touch()
    assert detect_process_properties({"APP_ENV": "dev", "TZ": "Asia/Tokyo"}, str(docker)) == ProcessProperties(
        "dev", "docker", "Asia/Tokyo"
    )
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=x,deployment.environment.name=qa",
        "FLASK_ENV": "development",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }
    assert detect_process_properties(env, str(docker)) == ProcessProperties("qa", "kubernetes", "UTC")
    assert detect_process_properties({"FLASK_ENV": "", "ENVIRONMENT": "prod-eu"}, str(docker)).environment == "prod-eu"
