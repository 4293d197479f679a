"""Views with spans of the app's own: login and logout inside one, a request that waits for a second user's."""

import threading

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.models import User
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from opentelemetry import trace
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework_simplejwt.views import TokenObtainPairView

from .api import Work
from .authentication import token_checks
from .backends import loads

tracer = trace.get_tracer("djsite")
_pair = threading.Barrier(2, timeout=10)


def health(request):
    return HttpResponse("ok")


@csrf_exempt
def login_view(request):
    user = User.objects.get(username=request.POST["username"])
    with tracer.start_as_current_span("app.login"):
        login(request, user)
    with tracer.start_as_current_span("after-login"):
        return HttpResponse("ok")


@csrf_exempt
def logout_view(request):
    with tracer.start_as_current_span("before-logout"):
        pass
    with tracer.start_as_current_span("app.logout"):
        logout(request)
    with tracer.start_as_current_span("after-logout"):
        return HttpResponse("ok")


def work(request):
    with tracer.start_as_current_span("work"):
        if request.GET.get("pair"):
            _pair.wait()
    with tracer.start_as_current_span("after-work"):
        return HttpResponse("ok")


def stats(request):
    return JsonResponse({"loads": loads["count"], "token_checks": token_checks["count"], "middleware": list(settings.MIDDLEWARE)})


urlpatterns = [
    path("health", health),
    path("login", login_view),
    path("logout", logout_view),
    path("work", work),
    path("stats", stats),
    path("api/token", obtain_auth_token),
    path("api/jwt", TokenObtainPairView.as_view()),
    path("api/work", Work.as_view()),
]
