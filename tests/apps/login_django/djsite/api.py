"""A DRF API beside the session site: DRF authenticates in the view (session, token, JWT), after Django's middleware."""

import threading

from opentelemetry import trace
from rest_framework.response import Response
from rest_framework.views import APIView

tracer = trace.get_tracer("djsite.api")
_pair = threading.Barrier(2, timeout=10)


class Work(APIView):
    def get(self, request):
        with tracer.start_as_current_span("api.work"):
            if request.query_params.get("pair"):
                _pair.wait()
        with tracer.start_as_current_span("after-api-work"):
            return Response({"ok": True})
