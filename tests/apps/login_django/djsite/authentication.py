"""The token authenticator, counting its calls (``GET /stats``): a test knows each token was checked once, by DRF alone.

Its own module, as DRF asks: ``rest_framework.views`` imports the authentication classes, so they cannot import views.
"""

import threading

from rest_framework.authentication import TokenAuthentication

token_checks = {"count": 0}
_lock = threading.Lock()


class CountingTokenAuthentication(TokenAuthentication):
    def authenticate(self, request):
        if request.META.get("HTTP_AUTHORIZATION", "").startswith("Token "):
            with _lock:
                token_checks["count"] += 1
        return super().authenticate(request)
