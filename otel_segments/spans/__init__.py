"""Spans: who the request is for (contextvars, baggage), the process's own properties, the segment cache, and the
span processor's hot path that stamps them on every span.

May import: settings/, runtime/. Never SQL, a sink or the job (segments/, sinks/, job/): the hot path stays a look-up.
"""
