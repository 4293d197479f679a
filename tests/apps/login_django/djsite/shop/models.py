"""The site's own activity: orders, one row each, which the built-in ``django`` schema mapping is pointed at."""

from django.conf import settings
from django.db import models


class Order(models.Model):
    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    created_at = models.DateTimeField()
