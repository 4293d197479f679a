"""Runtime: adapters to what differs under us — OpenTelemetry releases (compat), the interpreter and green threads
(native, watchdog), instrumentation suppression (untraced), database drivers (database), the OTLP exporters (exporters).

May import: settings/ only.
"""
