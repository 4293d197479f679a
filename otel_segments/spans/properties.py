"""The process's own super properties: where and how this app runs.

Computed once per process; they go on the Resource and on every span so a trace
can be filtered by environment or deployment method without a resource join.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from opentelemetry.sdk.resources import Resource, ResourceDetector

from ..settings.config import parse_headers

DEPLOYMENT_ENVIRONMENT = "deployment.environment.name"
DEPLOYMENT_METHOD = "app.deployment.method"
TIMEZONE = "app.timezone"


@dataclass(frozen=True)
class ProcessProperties:
    environment: str
    deployment_method: str
    timezone: str

    @property
    def attributes(self) -> Mapping[str, str]:
        return MappingProxyType(
            {
                TIMEZONE: self.timezone,
                DEPLOYMENT_ENVIRONMENT: self.environment,
                DEPLOYMENT_METHOD: self.deployment_method,
            }
        )


def detect_process_properties(environ: Mapping[str, str] | None = None, dockerenv: str = "/.dockerenv") -> ProcessProperties:
    env = os.environ if environ is None else environ
    resource_attributes = parse_headers("OTEL_RESOURCE_ATTRIBUTES", env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    environment = resource_attributes.get(DEPLOYMENT_ENVIRONMENT) or next(
        (env[name].strip() for name in ("FLASK_ENV", "APP_ENV", "ENVIRONMENT") if env.get(name, "").strip()),
        "production",
    )
    if env.get("KUBERNETES_SERVICE_HOST"):
        method = "kubernetes"
    elif os.path.exists(dockerenv):
        method = "docker"
    else:
        method = "native"
    return ProcessProperties(environment=environment, deployment_method=method, timezone=env.get("TZ", "").strip() or "UTC")


class ProcessResourceDetector(ResourceDetector):
    """Adds the process properties to the Resource.

    The SDK runs it only when ``otel_segments`` is named in
    ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``; our configurator adds the same
    attributes without that variable.
    """

    def detect(self) -> Resource:
        return Resource(dict(detect_process_properties().attributes))
