"""Which OTLP exporter each signal gets: the protocol's own, named explicitly; gRPC only when asked for and installed.

In-process, on ``runtime.exporters``; ``tests/compat/test_app_venv.py`` runs the same paths in an app's venv
where the gRPC extra really is missing.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest

from otel_segments.runtime import exporters
from otel_segments.settings import config

GRPC_MODULES = [module for (_, protocol), (module, _) in exporters.EXPORTERS.items() if protocol == "grpc"]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        config.OTEL_EXPORTER_OTLP_PROTOCOL,
        *(f"OTEL_EXPORTER_OTLP_{s.upper()}_PROTOCOL" for s in config.SIGNALS),
        *exporters.EXPORTER_VARIABLES.values(),
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(exporters, "_missing_reported", set())


def _grpc_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a venv without the grpc extra: importing its exporters fails."""
    for module in GRPC_MODULES:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(("protocol", "expected"), [(None, "otlp_proto_http"), ("grpc", "otlp_proto_grpc")])
def test_otlp_names_the_protocols_exporter(protocol, expected, monkeypatch, caplog) -> None:
    """The SDK reads "otlp" as gRPC when no protocol is set; our default is HTTP, so the name is made explicit."""
    caplog.set_level(logging.WARNING)
    if protocol:
        monkeypatch.setenv(config.OTEL_EXPORTER_OTLP_PROTOCOL, protocol)
    for variable in exporters.EXPORTER_VARIABLES.values():
        monkeypatch.setenv(variable, "otlp")
    exporters.sanitize_environment()
    assert {v: os.environ[v] for v in exporters.EXPORTER_VARIABLES.values()} == dict.fromkeys(
        exporters.EXPORTER_VARIABLES.values(), expected
    )
    assert caplog.records == []


def test_grpc_asked_for_but_missing_turns_otlp_off_with_one_line_naming_the_extra(monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING)
    _grpc_missing(monkeypatch)
    monkeypatch.setenv(config.OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")

    exporters.sanitize_environment()

    assert os.environ["OTEL_TRACES_EXPORTER"] == "console"  # the app's other exporter stays
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"
    assert all(exporters.exporter_off(signal) for signal in config.SIGNALS)
    assert exporters.exporter_args(config.Settings.from_env()) == {}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # one line for every signal and every later look-up
    assert lines[0].startswith("otel_segments: OTEL_EXPORTER_OTLP_PROTOCOL=grpc asks for OTLP/grpc"), lines
    assert "pip install 'otel-segments[grpc]'" in lines[0]


def test_a_per_signal_grpc_protocol_is_named_and_leaves_the_other_signals_on_http(monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING)
    _grpc_missing(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")
    assert [exporters.exporter_off(signal) for signal in config.SIGNALS] == [False, False, True]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL=grpc" in line and "otel-segments[grpc]" in line


def test_http_never_imports_grpc(monkeypatch) -> None:
    """With the default protocol, building every signal's exporter arguments touches no gRPC module."""
    _grpc_missing(monkeypatch)  # an import attempt would fail and warn
    assert not any(exporters.exporter_off(signal) for signal in config.SIGNALS)
