"""The refresh job: a MetricReader-driven cycle that ties the database (segments/) to the sinks, with its lease,
fork lifecycle, delivery state and reporting.

May import: settings/, runtime/, spans/, segments/, sinks/. Nothing imports it but the root's entry points.
"""
