"""The identity store as jobs: list, show, remove (an identity and any interrupted run)."""

from __future__ import annotations

from pathlib import Path

from ..context import Context

LIST_FIELDS = ("name", "backbone", "encoder", "steps", "created")


def list_identities(ctx: Context) -> list[dict]:
    return [ctx.store.load_info(n) for n in ctx.store.names()]


def show(ctx: Context, name: str) -> dict:
    return {**ctx.store.load_info(name), "path": str(ctx.store.path(name))}


def removable(ctx: Context, name: str) -> str:
    """What `remove` would delete: "identity" or "interrupted run" (error if neither exists)."""
    from ..runs import Run

    if not Run(ctx.store, name).exists():
        ctx.store.load_info(name)  # the "no identity named ..." error
    return "identity" if ctx.store.exists(name) else "interrupted run"


def remove(ctx: Context, name: str) -> list[Path]:
    """Delete the identity `name` and any interrupted tuning run of that name; the paths removed."""
    from ..locks import IdentityLock
    from ..runs import Run

    with IdentityLock(ctx.store, name, "removed"):  # never under a running `pv tune` of that name
        removable(ctx, name)
        run, removed = Run(ctx.store, name), []
        if run.exists():
            run.remove()
            removed.append(run.root)
        if ctx.store.exists(name):
            removed.append(ctx.store.remove(name))
    return removed
