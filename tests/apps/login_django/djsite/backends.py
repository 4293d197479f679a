"""The stock backend, counting how often a request's user is loaded from the session (``GET /stats``)."""

import threading

from django.contrib.auth.backends import ModelBackend

loads = {"count": 0}
_lock = threading.Lock()


class CountingBackend(ModelBackend):
    def get_user(self, user_id):
        with _lock:
            loads["count"] += 1
        return super().get_user(user_id)
