"""What the store test modules share: a root's ids sorted the way the run's plan sorts them."""

from __future__ import annotations

from types import SimpleNamespace

from pusa_batch.engine.plan import ItemKind, classify
from pusa_batch.store.store import Store


def planned(store: Store, entries: list[tuple[str, str]]) -> SimpleNamespace:
    """Each (id, fingerprint) as the run's plan classifies it, and the root's orphans."""
    state = store.state()
    kinds = {item_id: classify(state, item_id, fp) for item_id, fp in entries}

    def having(*wanted):
        return tuple(i for i, kind in kinds.items() if kind in wanted)

    return SimpleNamespace(
        done=having(ItemKind.DONE),
        changed=having(ItemKind.CHANGED),
        pending=having(ItemKind.PENDING, ItemKind.FAILED),
        failed=having(ItemKind.FAILED),
        orphans=tuple(i for i in having(ItemKind.PENDING, ItemKind.FAILED) if i in state.orphans),
    )
