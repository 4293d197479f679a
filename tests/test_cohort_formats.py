"""`otel-segments cohorts --format traceql|jaeger|phoenix`: each line finds exactly the spans of that cohort's users."""

from __future__ import annotations

import ast
import subprocess

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_segments
from otel_segments.segments.cohorts import COHORTS
from otel_segments.segments.span_properties import span_property_selection
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.processor import SuperPropertiesSpanProcessor
from tests.conftest import VENV_BIN


def _lines(fmt: str) -> dict[str, str]:
    out = subprocess.run(
        [str(VENV_BIN / "otel-segments"), "cohorts", "--format", fmt], capture_output=True, text=True, check=True
    )
    lines = dict(line.split("\t") for line in out.stdout.splitlines())
    assert list(lines) == [c.name for c in COHORTS]
    return lines


def _spans_by_cohort_member() -> dict[str, dict[str, object]]:
    """One span per cohort, of a user whose segment puts them in it, through the real processor and cache."""
    cache = SegmentCache(100, span_property_selection("default"))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(segments=cache))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for cohort in COHORTS:
        cache.put(cohort.name, {cohort.property: cohort.value})
        with otel_segments.user_context(cohort.name):
            provider.get_tracer("t").start_span(cohort.name).end()
    return {s.name: dict(s.attributes) for s in exporter.get_finished_spans()}


def test_jaeger_tag_search_matches_the_spans_of_the_cohort_only() -> None:
    spans = _spans_by_cohort_member()
    for name, tags in _lines("jaeger").items():
        key, value = tags.split("=")
        # Jaeger compares a tag's value as the string it displays: booleans as true/false
        shown = {n: str(a[key]).lower() if isinstance(a.get(key), bool) else a.get(key) for n, a in spans.items()}
        assert {n for n, v in shown.items() if v == value} >= {name}
        assert all(spans[n].get(key) is not None for n, v in shown.items() if v == value)
        cohort = next(c for c in COHORTS if c.name == name)
        assert {n for n, v in shown.items() if v == value} == {
            c.name for c in COHORTS if (c.property, c.value) == (cohort.property, cohort.value)
        }


def test_phoenix_filter_is_a_python_comparison_of_the_attribute() -> None:
    spans = _spans_by_cohort_member()
    for name, condition in _lines("phoenix").items():
        tree = ast.parse(condition, mode="eval").body
        assert isinstance(tree, ast.Compare) and isinstance(tree.ops[0], ast.Eq)
        key, value = ast.unparse(tree.left), ast.literal_eval(tree.comparators[0])
        matching = {n for n, a in spans.items() if key in a and a[key] == value and type(a[key]) is type(value)}
        cohort = next(c for c in COHORTS if c.name == name)
        assert name in matching
        assert matching == {c.name for c in COHORTS if (c.property, c.value) == (cohort.property, cohort.value)}


def test_traceql_lines_still_there() -> None:
    assert _lines("traceql")["power_users"] == "{ span.app.user.is_power_user = true }"
