"""Create the database and two users (run once, before the server): an admin with three recent orders, in two groups
(``editors`` made first, ``Admins`` sorting first by name: his role is ``editors``), and a plain user in none."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402 - after django.setup()
from django.core.management import call_command  # noqa: E402

call_command("migrate", verbosity=0, interactive=False)
ann = User.objects.create_user("ann", "ann@example.com", "x", is_superuser=True)
bo = User.objects.create_user("bo", "bo@example.com", "x")
ann.groups.add(Group.objects.create(name="editors"), Group.objects.create(name="Admins"))

from datetime import timedelta  # noqa: E402

from django.utils import timezone  # noqa: E402
from djsite.shop.models import Order  # noqa: E402

Order.objects.bulk_create(Order(user=ann, created_at=timezone.now() - timedelta(hours=h)) for h in (1, 2, 3))
print(ann.pk, bo.pk)
