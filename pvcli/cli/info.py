"""`pv plugins`, `pv profiles`, `pv env`: what is installed and how it is configured."""

from __future__ import annotations

import typer

from ..console import emit
from .common import JSON_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    from .. import api

    @app.command()
    @handle_errors
    def plugins(as_json: bool = JSON_OPT):
        """List plugins, their versions and what each registered."""
        rows = api.plugin_rows(state.context())
        if as_json:
            emit(rows, True)
            return
        for r in rows:
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registered"].items()) or "nothing"
            line = f"{r['name']} {r['version'] or ''}".strip() + f"  ({what})"
            emit(line + (f"  ERROR: {r['error']}" if r.get("error") else ""), False)

    @app.command()
    @handle_errors
    def profiles(
        show: str = typer.Option(None, "--show", help="Print a profile's fully resolved settings as YAML."),
        as_json: bool = JSON_OPT,
    ):
        """List the shipped profiles, or show one resolved."""
        import yaml

        from ..settings import resolve

        if show:
            settings = resolve(show)[1].to_dict()
            emit(settings if as_json else yaml.safe_dump(settings, sort_keys=False).rstrip(), as_json)
            return
        rows = api.profile_rows()
        if as_json:
            emit(rows, True)
        else:
            for r in rows:
                emit(f"{r['name']}{' (default)' if r['default'] else ''}: {r['description']}", False)
                if r.get("tuning_memory"):
                    emit(f"  tuning (traced): {_cards(r['tuning_memory'])}", False)
                    emit(f"  generation (traced): {_cards(r['tuning_memory']['generation'])}", False)

    @app.command()
    @handle_errors
    def env(as_json: bool = JSON_OPT):
        """Versions, devices and providers, for bug reports."""
        data = api.environment(state.context())
        if as_json:
            emit(data, True)
        else:
            for k, v in data.items():
                emit(f"{k}: {v}", False)


def _cards(memory: dict) -> str:
    """`pv profiles`' line per profile: the smallest card that tunes it, and each card class."""
    from ..api import plan_changes_text as changes_text

    parts = []
    for card, c in memory["cards"].items():
        what = (f"{c['peak_gib']:.1f} GiB" + (f" with {changes_text(c['changes'])}" if c["changes"] else "")) \
            if c["fits"] else "does not fit"
        parts.append(f"{card} GB: {what}")
    smallest = memory["smallest_card_gb"]
    return (f"smallest card {smallest} GB" if smallest else "no card class up to 80 GB") + "; " + "; ".join(parts)
