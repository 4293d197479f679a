"""Static checks of collector-config/: no collector binary runs here, so we check what it would.

Every file parses; every composition the docs and docker-compose.yaml use (gateway.yaml plus
overlays, merged as the collector merges several --config files) names only components it
defines, of types that exist in the pinned otelcol-contrib release, with fields those
components document; every ${env:...} is documented; the attributes the sampling policies and
OTTL statements read are ones otel_segments writes, with the value type the policy expects; the
bearer token the collector accepts is the header the plugin sends. The negative tests feed broken
configurations through the same checker.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_segments.segments.rules import UserActivity, person_properties
from otel_segments.segments.span_properties import DEFAULT_SPAN_PROPERTIES
from otel_segments.settings.config import Secret, otlp_headers
from otel_segments.spans.cache import segment_attributes
from otel_segments.spans.context import UserProperties

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector-config"
DOCS = ROOT / "docs" / "collector.md"
DATA = Path(__file__).resolve().parent / "data"
RELEASE = json.loads((DATA / "otelcol_contrib_components.json").read_text())
SETTINGS = json.loads((DATA / "otelcol_component_settings.json").read_text())["components"]

BASE = "gateway.yaml"
COMPOSE = "docker-compose.yaml"
KINDS = ("extensions", "receivers", "processors", "exporters", "connectors")
SIGNALS = ("traces", "metrics", "logs")
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
COMPOSE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
OTTL_ATTRIBUTE = re.compile(r'attributes\["([^"]+)"\]|delete_key\(attributes,\s*"([^"]+)"\)')
CONTAINER_DIR = "/etc/otelcol-contrib/"


def load(name: str) -> Any:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


def collector_files() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if p.name != COMPOSE)


def merge(base: Any, overlay: Any) -> Any:
    """The collector's merge of several --config files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(overlay)


def compose_config_files() -> list[str]:
    service = load(COMPOSE)["services"]["otelcol"]
    files = []
    for arg in service["command"]:
        assert arg.startswith("--config=" + CONTAINER_DIR), arg
        files.append(arg.removeprefix("--config=" + CONTAINER_DIR))
    return files


def compositions() -> dict[str, list[str]]:
    """Every way the docs run the collector: the gateway alone, with each overlay, and as docker compose does."""
    result = {BASE: [BASE]}
    for name in collector_files():
        if name != BASE:
            result[f"{BASE}+{name}"] = [BASE, name]
    result["docker compose"] = compose_config_files()
    return result


def composed(files: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name in files:
        config = merge(config, load(name))
    return config


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


# --- the checker -------------------------------------------------------------------------------


def check_schema(value: Any, node: dict[str, Any] | None, path: str) -> list[str]:
    if node is None:
        return []
    if "enum" in node:
        if isinstance(value, str) and ENV_REF.fullmatch(value):
            return []
        return [] if value in node["enum"] else [f"{path}: {value!r} is not one of {node['enum']}"]
    if "list" in node:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in check_schema(item, node["list"], f"{path}[{i}]")]
    if value is None:  # an empty section such as `grpc:` takes the component's defaults
        return []
    if not isinstance(value, dict):
        return [f"{path}: expected a map, got {type(value).__name__}"]
    problems = []
    for key, item in value.items():
        if key not in node["map"]:
            problems.append(f"{path}.{key}: unknown field (allowed: {', '.join(sorted(node['map']))})")
        else:
            problems.extend(check_schema(item, node["map"][key], f"{path}.{key}"))
    return problems


def _policies(policies: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for policy in policies or []:
        yield policy
        yield from _policies(policy.get("and", {}).get("and_sub_policy", []))
        yield from _policies(policy.get("composite", {}).get("composite_sub_policy", []))


def check_tail_sampling(path: str, config: dict[str, Any]) -> list[str]:
    """A policy's settings live under the key named by its type; anything else is silently ignored by the collector."""
    problems = []
    for policy in _policies(config.get("policies", [])):
        kind = policy.get("type")
        if kind != "always_sample" and kind not in policy:
            problems.append(f"{path}: policy {policy.get('name')!r} of type {kind!r} has no {kind!r} settings")
        stray = set(policy) - {"name", "type", kind}
        if stray:
            problems.append(f"{path}: policy {policy.get('name')!r} has settings for other types: {sorted(stray)}")
    return problems


def check_config(config: dict[str, Any]) -> list[str]:
    problems = [f"unknown top-level section {key!r}" for key in config if key not in (*KINDS, "service")]
    for kind in KINDS:
        for component_id, settings in (config.get(kind) or {}).items():
            ctype = component_type(component_id)
            known = RELEASE["types"].get(kind, {}).get(ctype)
            if known is None or known["module"] not in RELEASE["modules"][kind]:
                problems.append(
                    f"{kind}.{component_id}: type {ctype!r} is not a {kind[:-1]} of otelcol-contrib {RELEASE['version']}"
                )
                continue
            schema = SETTINGS.get(f"{kind}/{ctype}")
            if schema is None:
                problems.append(f"{kind}.{component_id}: no documented settings recorded in tests/data for {kind}/{ctype}")
                continue
            problems.extend(check_schema(settings, schema, f"{kind}.{component_id}"))
            if ctype == "tail_sampling":
                problems.extend(check_tail_sampling(f"{kind}.{component_id}", settings or {}))

    service = config.get("service") or {}
    problems += [f"service.{key}: unknown field" for key in service if key not in ("extensions", "pipelines", "telemetry")]
    enabled = service.get("extensions") or []
    for ext in enabled:
        if ext not in (config.get("extensions") or {}):
            problems.append(f"service.extensions: {ext!r} is not defined under extensions")
    for name, pipeline in (service.get("pipelines") or {}).items():
        if component_type(name) not in SIGNALS:
            problems.append(f"service.pipelines.{name}: unknown signal")
        problems += [f"service.pipelines.{name}.{key}: unknown field" for key in pipeline if key not in KINDS[1:4]]
        for kind in ("receivers", "exporters"):
            if not pipeline.get(kind):
                problems.append(f"service.pipelines.{name}: needs at least one of {kind}")
        for kind in ("receivers", "processors", "exporters"):
            ids = pipeline.get(kind) or []
            if len(set(ids)) != len(ids):
                problems.append(f"service.pipelines.{name}.{kind}: duplicates in {ids}")
            for component_id in ids:
                connector = kind != "processors" and component_id in (config.get("connectors") or {})
                if component_id not in (config.get(kind) or {}) and not connector:
                    problems.append(f"service.pipelines.{name}: {kind[:-1]} {component_id!r} is not defined under {kind}")
        processors = [component_type(p) for p in pipeline.get("processors") or []]
        if "memory_limiter" in processors and processors[0] != "memory_limiter":
            problems.append(f"service.pipelines.{name}: memory_limiter must come first")
        if "tail_sampling" in processors and component_type(name) != "traces":
            problems.append(f"service.pipelines.{name}: tail_sampling handles traces only")

    problems += check_connectors(config)
    for path, authenticator in _authenticators(config):
        if authenticator not in (config.get("extensions") or {}):
            problems.append(f"{path}: authenticator {authenticator!r} is not defined under extensions")
        elif authenticator not in enabled:
            problems.append(f"{path}: authenticator {authenticator!r} is not listed in service.extensions")
    return problems


#: What each connector type takes in and gives out (otelcol-contrib 0.136.0, the connector's factory.go).
CONNECTOR_SIGNALS = {"spanmetrics": ("traces", "metrics")}


def check_connectors(config: dict[str, Any]) -> list[str]:
    """A connector is the exporter of a pipeline of the signal it takes and the receiver of one of the signal it gives."""
    problems = []
    pipelines = (config.get("service") or {}).get("pipelines") or {}
    for connector_id in config.get("connectors") or {}:
        takes, gives = CONNECTOR_SIGNALS.get(component_type(connector_id), (None, None))
        if takes is None:
            problems.append(f"connectors.{connector_id}: no signals recorded for its type")
            continue
        into = [n for n, p in pipelines.items() if connector_id in (p.get("exporters") or [])]
        out_of = [n for n, p in pipelines.items() if connector_id in (p.get("receivers") or [])]
        if not into or any(component_type(n) != takes for n in into):
            problems.append(f"connectors.{connector_id}: must be an exporter of {takes} pipelines only, is of {into}")
        if not out_of or any(component_type(n) != gives for n in out_of):
            problems.append(f"connectors.{connector_id}: must be a receiver of {gives} pipelines only, is of {out_of}")
    return problems


def _authenticators(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for kind in ("receivers", "exporters"):
        for component_id, settings in (config.get(kind) or {}).items():
            sections = {component_id: settings or {}}
            if component_type(component_id) == "otlp" and kind == "receivers":
                sections = {f"{component_id}.{p}": s or {} for p, s in ((settings or {}).get("protocols") or {}).items()}
            for path, section in sections.items():
                if "auth" in section:
                    yield f"{kind}.{path}.auth", section["auth"].get("authenticator")


# --- what otel_segments writes -------------------------------------------------------------------


def emitted_attributes() -> dict[str, Any]:
    """Span attributes the plugin writes by default for a fully known user: context properties plus the latest segment."""
    now = datetime(2026, 1, 15, 12, tzinfo=timezone.utc)
    user = UserProperties("42", role="admin", is_admin=True, auth_method="oidc")
    row = UserActivity(
        user_id="42",
        created_at=now - timedelta(days=3),
        last_login=now - timedelta(hours=1),
        role="admin",
        is_admin=True,
        auth_method="oidc",
        entries_24h=2,
        entries_7d=12,
        entries_30d=30,
        entries_all_time=80,
        timer_entries=50,
        manual_entries=30,
        total_seconds=7200.0,
        active_projects=2,
        total_projects=3,
        assigned_tasks=4,
        completed_tasks=1,
    )
    return {**user.attributes, **segment_attributes(person_properties(row, now=now).set, DEFAULT_SPAN_PROPERTIES)}


POLICY_VALUE_TYPES = {"boolean_attribute": bool, "string_attribute": str, "numeric_attribute": int}


def check_attributes(config: dict[str, Any], emitted: dict[str, Any]) -> list[str]:
    """Sampling policies and OTTL statements may only read attributes the plugin writes, of the type they compare."""
    problems = []
    for component_id, settings in (config.get("processors") or {}).items():
        ctype = component_type(component_id)
        if ctype == "tail_sampling":
            for policy in _policies((settings or {}).get("policies", [])):
                expected = POLICY_VALUE_TYPES.get(policy.get("type"))
                if expected is None:
                    continue
                key = (policy.get(policy["type"]) or {}).get("key")  # a missing section is check_tail_sampling's to report
                if key is None:
                    continue
                if key not in emitted:
                    problems.append(
                        f"processors.{component_id}: policy {policy.get('name')!r} reads {key!r}, "
                        "which otel_segments never writes"
                    )
                elif type(emitted[key]) is not expected:
                    problems.append(
                        f"processors.{component_id}: policy {policy.get('name')!r} compares {key!r} as {expected.__name__}, "
                        f"but otel_segments writes a {type(emitted[key]).__name__}"
                    )
        if ctype == "transform":
            for field in ("trace_statements", "metric_statements", "log_statements"):
                for group in (settings or {}).get(field) or []:
                    for statement in group.get("statements", []):
                        for match in OTTL_ATTRIBUTE.finditer(statement):
                            name = match.group(1) or match.group(2)
                            if name not in emitted:
                                problems.append(
                                    f"processors.{component_id}: statement names {name!r}, which otel_segments never writes"
                                )
    for component_id, settings in (config.get("connectors") or {}).items():
        if component_type(component_id) != "spanmetrics":
            continue
        for dimension in (settings or {}).get("dimensions") or []:
            name = dimension.get("name")
            if name not in emitted or not isinstance(emitted[name], (bool, str)) or name == "user.id":
                problems.append(
                    f"connectors.{component_id}: dimension {name!r} is not a categorical segment attribute spans carry "
                    "by default (unbounded series)"
                )
    return problems


def env_references(text: str) -> set[str]:
    return set(ENV_REF.findall(text))


def undocumented(names: set[str], doc: str) -> set[str]:
    """Names that have no row of their own in a Markdown table of the doc."""
    rows = [line for line in doc.splitlines() if line.lstrip().startswith("|")]
    return {name for name in names if not any(f"`{name}`" in row for row in rows)}


# --- tests ---------------------------------------------------------------------------------------


def test_release_data_is_consistent() -> None:
    assert RELEASE["distribution"] == "otelcol-contrib"
    assert RELEASE["image"].endswith(":" + RELEASE["version"])
    modules = [m for kind in RELEASE["modules"].values() for m in kind]
    assert len(modules) == len(set(modules)) > 200
    for kind, types in RELEASE["types"].items():
        for ctype, entry in types.items():
            assert entry["module"] in RELEASE["modules"][kind], (kind, ctype)
            assert entry["source"], (kind, ctype)
    for name, schema in SETTINGS.items():
        assert schema.get("source"), name


@pytest.mark.parametrize("name", [*collector_files(), COMPOSE])
def test_every_file_parses_to_a_map(name: str) -> None:
    assert isinstance(load(name), dict)


def test_every_overlay_is_used_by_some_composition() -> None:
    used = {name for files in compositions().values() for name in files}
    assert used == set(collector_files())


@pytest.mark.parametrize("label", sorted(compositions()))
def test_composition_is_valid(label: str) -> None:
    config = composed(compositions()[label])
    assert check_config(config) == []
    assert check_attributes(config, emitted_attributes()) == []
    assert set(config["service"]["pipelines"]) >= set(SIGNALS)


def test_each_overlay_alone_names_only_known_components() -> None:
    for name in collector_files():
        config = load(name)
        for kind in KINDS:
            for component_id, settings in (config.get(kind) or {}).items():
                schema = SETTINGS[f"{kind}/{component_type(component_id)}"]
                assert check_schema(settings, schema, f"{name}:{kind}.{component_id}") == []


def test_receivers_accept_only_the_token_the_plugin_sends() -> None:
    config = load(BASE)
    extensions = config["extensions"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"grpc", "http"}
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    for protocol in protocols.values():
        authenticator = protocol["auth"]["authenticator"]
        assert component_type(authenticator) == "bearertokenauth"
        auth = extensions[authenticator]
        assert auth["token"] == "${env:OTEL_EXPORTER_OTLP_TOKEN}"
        header = auth.get("header", "Authorization").lower()
        scheme = auth.get("scheme", "Bearer")
        sent = otlp_headers("traces", Secret("s3cret-token"), environ={})
        assert sent[header] == f"{scheme} s3cret-token"


def test_tail_sampling_keeps_every_segment_the_issue_names_and_samples_the_rest() -> None:
    policies = load(BASE)["processors"]["tail_sampling"]["policies"]
    top = {(p["type"], json.dumps(p.get(p["type"]), sort_keys=True)) for p in policies}
    assert ("status_code", json.dumps({"status_codes": ["ERROR"]})) in top
    for key in ("app.user.is_admin", "app.user.is_power_user", "app.user.is_at_risk"):
        assert ("boolean_attribute", json.dumps({"key": key, "value": True}, sort_keys=True)) in top
    assert [p["type"] for p in policies].count("probabilistic") == 1


@pytest.mark.parametrize("overlay", ["hash-user-ids.yaml", "drop-user-ids.yaml"])
def test_privacy_overlays_touch_user_id_in_every_signal_that_carries_it(overlay: str) -> None:
    config = composed([BASE, overlay])
    (transform_id,) = [p for p in config["processors"] if component_type(p) == "transform"]
    transform = config["processors"][transform_id]
    statements = {g["context"]: " ".join(g["statements"]) for f in ("trace_statements", "log_statements") for g in transform[f]}
    assert set(statements) == {"span", "resource", "log"}
    for text in statements.values():
        assert '"user.id"' in text
        assert ("SHA256(" in text) if overlay.startswith("hash") else ("delete_key(" in text)
    for signal in ("traces", "logs"):
        processors = config["service"]["pipelines"][signal]["processors"]
        assert transform_id in processors
        assert processors.index(transform_id) < processors.index("batch")


@pytest.mark.parametrize("label", sorted(compositions()))
def test_spanmetrics_counts_every_span_per_segment_with_bounded_cardinality(label: str) -> None:
    config = composed(compositions()[label])
    spanmetrics = config["connectors"]["spanmetrics"]
    pipelines = config["service"]["pipelines"]
    [feeding] = [name for name, p in pipelines.items() if "spanmetrics" in p["exporters"]]
    assert pipelines[feeding]["receivers"] == ["otlp"]
    assert "tail_sampling" not in pipelines[feeding]["processors"]  # rates and latencies of every request, not of the kept ones
    assert "spanmetrics" in pipelines["metrics"]["receivers"]
    names = [d["name"] for d in spanmetrics["dimensions"]]
    assert {"app.user.engagement_level", "app.user.role", "app.user.is_power_user"} <= set(names)
    assert all(n.startswith("app.user.") and n.removeprefix("app.user.") in DEFAULT_SPAN_PROPERTIES for n in names)
    assert all(d.get("default") == "unknown" for d in spanmetrics["dimensions"])  # users without a segment yet: one series
    assert 0 < spanmetrics["aggregation_cardinality_limit"] <= 100_000
    assert spanmetrics["histogram"]["unit"] == "ms"


def test_collector_doc_shows_the_promql_for_power_users_against_everyone() -> None:
    doc = DOCS.read_text()
    assert "histogram_quantile(0.95" in doc
    assert "traces_span_metrics_duration_milliseconds_bucket" in doc
    assert 'app_user_is_power_user="true"' in doc


def test_every_env_var_is_documented() -> None:
    doc = DOCS.read_text()
    names = set()
    for name in collector_files():
        names |= env_references((CONFIG_DIR / name).read_text())
    compose_text = (CONFIG_DIR / COMPOSE).read_text()
    names |= set(COMPOSE_REF.findall(compose_text))
    assert {"OTEL_EXPORTER_OTLP_TOKEN", "TRACING_BACKEND_ENDPOINT"} <= names
    assert undocumented(names, doc) == set()


def test_compose_environment_feeds_the_collector_configs_it_loads() -> None:
    service = load(COMPOSE)["services"]["otelcol"]
    used = set()
    for name in compose_config_files():
        used |= env_references((CONFIG_DIR / name).read_text())
    assert set(service["environment"]) == used
    assert service["environment"]["OTEL_EXPORTER_OTLP_TOKEN"].startswith("${OTEL_EXPORTER_OTLP_TOKEN:?")


def test_compose_wires_the_pinned_collector_to_jaeger_v2() -> None:
    compose = load(COMPOSE)
    services = compose["services"]
    collector, jaeger = services["otelcol"], services["jaeger"]
    assert collector["image"] == RELEASE["image"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in collector["volumes"]}
    for name in compose_config_files():
        assert mounts[CONTAINER_DIR + name] == "./" + name
        assert (CONFIG_DIR / name).is_file()
    assert {"4317:4317", "4318:4318"} <= set(collector["ports"])
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"])
    assert jaeger["environment"]["JAEGER_LISTEN_HOST"] == "0.0.0.0"
    assert "16686:16686" in jaeger["ports"]
    host, port = collector["environment"]["TRACING_BACKEND_ENDPOINT"].split(":")
    assert host in services and port == "4317"
    assert collector["environment"]["TRACING_BACKEND_INSECURE"] == "true"
    assert "jaeger" in collector["depends_on"]


# --- the checker catches mistakes ----------------------------------------------------------------


def _rename(section: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def apply(config: dict[str, Any]) -> None:
        config[section][new] = config[section].pop(old)

    return apply


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return apply


def _policy(index: int, value: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def apply(config: dict[str, Any]) -> None:
        config["processors"]["tail_sampling"]["policies"][index] = value

    return apply


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "processor type typo": (_rename("processors", "memory_limiter", "memory_limitter"), "'memory_limitter' is not a processor"),
    "pipeline names an undefined exporter": (
        _set("service.pipelines.traces.exporters", ["otlp/backnd"]),
        "'otlp/backnd' is not defined",
    ),
    "bearertokenauth field typo": (_set("extensions.bearertokenauth.tokn", "x"), "tokn: unknown field"),
    "memory_limiter field typo": (_set("processors.memory_limiter.limit_precentage", 80), "limit_precentage: unknown field"),
    "policy settings key typo": (
        _policy(
            1, {"name": "admins", "type": "boolean_attribute", "boolean_atribute": {"key": "app.user.is_admin", "value": True}}
        ),
        "boolean_atribute: unknown field",
    ),
    "policy settings under another type": (
        _policy(1, {"name": "admins", "type": "boolean_attribute", "string_attribute": {"key": "app.user.is_admin"}}),
        "has no 'boolean_attribute' settings",
    ),
    "status code typo": (_set("processors.tail_sampling.policies.0.status_code.status_codes", ["EROR"]), "'EROR' is not one of"),
    "unknown policy type": (_policy(0, {"name": "errors", "type": "status", "status": {}}), "'status' is not one of"),
    "attribute the plugin never writes": (
        _policy(2, {"name": "vip", "type": "boolean_attribute", "boolean_attribute": {"key": "app.user.is_vip", "value": True}}),
        "never writes",
    ),
    "boolean policy on a string attribute": (
        _policy(
            2,
            {
                "name": "lvl",
                "type": "boolean_attribute",
                "boolean_attribute": {"key": "app.user.engagement_level", "value": True},
            },
        ),
        "writes a str",
    ),
    "authenticator not enabled": (_set("service.extensions", ["health_check"]), "not listed in service.extensions"),
    "tail_sampling on metrics": (
        _set("service.pipelines.metrics.processors", ["memory_limiter", "tail_sampling", "batch"]),
        "tail_sampling handles traces only",
    ),
    "memory_limiter not first": (_set("service.pipelines.logs.processors", ["batch", "memory_limiter"]), "must come first"),
    "exporter tls field typo": (
        _set("exporters.otlp/backend.tls.insecure_skip_verfy", True),
        "insecure_skip_verfy: unknown field",
    ),
    "spanmetrics dimension on user ids": (
        _set("connectors.spanmetrics.dimensions", [{"name": "user.id"}]),
        "'user.id' is not a categorical segment attribute",
    ),
    "spanmetrics dimension on a count": (
        _set("connectors.spanmetrics.dimensions", [{"name": "app.user.entries_last_7_days"}]),
        "'app.user.entries_last_7_days' is not a categorical segment attribute",
    ),
    "spanmetrics field typo": (_set("connectors.spanmetrics.dimension", []), "dimension: unknown field"),
    "spanmetrics not read by the metrics pipeline": (
        _set("service.pipelines.metrics.receivers", ["otlp"]),
        "must be a receiver of metrics pipelines",
    ),
    "spanmetrics fed by metrics": (
        _set("service.pipelines.metrics.exporters", ["otlp/backend", "spanmetrics"]),
        "must be an exporter of traces pipelines only",
    ),
    "receiver auth typo": (
        _set("receivers.otlp.protocols.http.auth", {"authenticatr": "bearertokenauth"}),
        "authenticatr: unknown field",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_checker_rejects_broken_config(case: str) -> None:
    config = composed([BASE])
    mutate, expected = BROKEN[case]
    mutate(config)
    problems = check_config(config) + check_attributes(config, emitted_attributes())
    assert any(expected in p for p in problems), problems


def test_checker_rejects_ottl_statement_on_foreign_attribute() -> None:
    config = composed([BASE, "drop-user-ids.yaml"])
    config["processors"]["transform/drop_user_id"]["trace_statements"][0]["statements"] = ['delete_key(attributes, "user.email")']
    assert any("'user.email'" in p for p in check_attributes(config, emitted_attributes()))


def test_undocumented_env_var_is_reported() -> None:
    doc = "| variable | meaning |\n|---|---|\n| `OTEL_EXPORTER_OTLP_TOKEN` | token |\n\nTRACING_BACKEND_ENDPOINT in prose only\n"
    assert undocumented({"OTEL_EXPORTER_OTLP_TOKEN", "TRACING_BACKEND_ENDPOINT"}, doc) == {"TRACING_BACKEND_ENDPOINT"}


def test_merge_replaces_lists_and_merges_maps() -> None:
    base = {"a": {"b": [1, 2], "c": 1}, "d": 1}
    assert merge(base, {"a": {"b": [3]}}) == {"a": {"b": [3], "c": 1}, "d": 1}
    assert base == {"a": {"b": [1, 2], "c": 1}, "d": 1}
