"""How the suite is shared between pytest-xdist's workers (``scripts/test`` runs ``-n`` workers).

Two rules, both about wall time only (no test depends on another):

- A module's tests run on one worker, so its module-scoped fixtures (servers started once, a database built once)
  are set up once, except the modules in ``SPLIT``, whose tests share no such fixture: each of their tests is
  scheduled on its own, so a long parametrized test (SQLite and PostgreSQL, say) runs on two workers at once. A
  module in ``SPLIT`` whose test does share one stops the run with a message (``assign``).
- The longest modules start first: a worker that takes a 3-minute module last would finish minutes after the rest.
  ``LONGEST`` names them, longest first, from a timed run (``--durations``); a module missing from it only starts
  later, nothing else changes.

The groups are made by our own scheduler (``pytest_xdist_make_scheduler``, xdist's hook for it) from each test's
id alone, as the controller sees no fixtures. Not ``xdist_group`` marks with ``--dist loadgroup``: pytest-xdist 3.8
applies those by rewriting ``item._nodeid``, which pytest 9.2 no longer reads, so every mark is silently ignored.
"""

from __future__ import annotations

from typing import Any

import pytest

LONGEST = (
    "tests/segments/test_incremental_equals_full.py",
    "tests/segments/test_exact_equals_full.py",
    "tests/servers/test_server_models.py",
    "tests/test_docs.py",
    "tests/compat/test_app_venv.py",
    "tests/servers/test_green_servers.py",
    "tests/reliability/test_faults.py",
    "tests/job/test_connection_budget.py",
    "tests/reliability/test_collector_down.py",
    "tests/reliability/test_poisoned_rows.py",
    "tests/reliability/test_peer_limits.py",
    "tests/job/test_demo_delivery.py",
    "tests/job/test_traces_only.py",
    "tests/segments/test_cli.py",
    "tests/job/test_configure_errors.py",
    "tests/integrations/test_zero_code.py",
    "tests/reliability/test_processes.py",
    "tests/segments/test_sql_rules.py",
    "tests/integrations/test_rest_framework.py",
    "tests/e2e/test_phoenix.py",
    "tests/test_packaging.py",
)
SPLIT = frozenset(
    {
        "tests/segments/test_incremental_equals_full.py",
        "tests/segments/test_exact_equals_full.py",
        "tests/reliability/test_faults.py",
        "tests/reliability/test_collector_down.py",
        "tests/reliability/test_poisoned_rows.py",
        "tests/reliability/test_slow_peers.py",
        "tests/reliability/test_processes.py",
        "tests/job/test_traces_only.py",
        "tests/job/test_configure_errors.py",
        "tests/segments/test_cli.py",
        "tests/segments/test_sql_rules.py",
    }
)
_SHARED_SCOPES = {"module", "class", "package"}


def module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def group(nodeid: str) -> str:
    """The unit of work a worker takes whole: the test's module, or the test itself in a ``SPLIT`` module."""
    return nodeid if module(nodeid) in SPLIT else module(nodeid)


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture set up once for several tests (of its module, class or package)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return True
    return any(d.scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values() for d in defs)


def assign(items: list[pytest.Item]) -> None:
    """Longest modules first (in LONGEST's order), then the rest as collected; a module's tests stay together.

    Also checks ``SPLIT``: a test scheduled apart from its module must not share a fixture with it.
    """
    for item in items:
        if module(item.nodeid) in SPLIT and _shares_a_fixture(item):
            raise pytest.UsageError(
                f"tests/scheduling.py: {module(item.nodeid)} is in SPLIT, but {item.nodeid} uses a fixture set up once "
                "for several tests: take the module out of SPLIT, or give the fixture function scope"
            )
    rank = {name: i for i, name in enumerate(LONGEST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(module(item.nodeid), len(LONGEST)), position[id(item)]))


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load-by-scope scheduler, with ``group`` as the scope (kept in collection order: --no-loadscope-reorder)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid)

    return ByGroup(config, log)
