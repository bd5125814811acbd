"""edgeshot.control.store: the controller's SQLite state (WAL, migrations per component).

    store = Store(state_dir / "controller.db")   # applies pending migrations
    register("billing", [Migration(1, "usage", "CREATE TABLE ...")])  # before opening
"""

from __future__ import annotations

from ._store import Migration, SchemaTooNew, Store, register

__all__ = ["Migration", "SchemaTooNew", "Store", "register"]
