"""How the suite is shared between pytest-xdist's workers (``scripts/test`` runs ``-n`` workers, ``--dist loadgroup``).

Two rules, both about wall time only (no test depends on another):

- A test that shares a module-scoped fixture with its neighbours (servers started once for the module, a database
  built once) stays on one worker with them, so that fixture is set up once. Every other test is scheduled on its
  own, so a long parametrized test (SQLite and PostgreSQL, say) runs on two workers at once.
- The longest groups start first: a worker that takes a 3-minute module last would finish minutes after the rest.
  ``LONGEST`` names them, longest first, from a timed run (``--durations``); a module missing from it only starts
  later, nothing else changes.
"""

from __future__ import annotations

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
_SHARED_SCOPES = {"module", "class", "package"}


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture set up once for several tests (of its module, class or package)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return True
    return any(d.scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values() for d in defs)


def group(item: pytest.Item) -> str:
    return _module(item) if _shares_a_fixture(item) else item.nodeid


def order(items: list[pytest.Item]) -> None:
    """Longest modules first (in LONGEST's order), then the rest as collected; a module's tests stay together."""
    rank = {module: i for i, module in enumerate(LONGEST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(_module(item), len(LONGEST)), position[id(item)]))


def assign(items: list[pytest.Item]) -> None:
    """Order the items and mark each with its xdist group (read by ``--dist loadgroup``, ignored without xdist)."""
    order(items)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
