"""The tuning step of each traced profile on each card class (12, 16, 24, 48, 80 GB): whether it fits,
with which memory switches, the traced peak per phase; pv generate's clip per profile (bf16 and fp8
weights) per phase; the smallest card for each (README's profile table). Written into the traces pv
ships (pvcli/engine/memory_traces.json, what `pv profiles` and the dry run read) and printed as
BENCHMARKS.md's tables. Traces on the meta device (pvcli/engine/memtrace.py): no weights, no GPU.

Run: python bench/memory_table.py [--profiles wan2.1-14b ...] [--fresh] (minutes per real profile)."""

from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULT = ["tiny-wan", "tiny-hunyuan", "wan2.1-1.3b", "wan2.2-5b", "wan2.1-14b", "wan2.2-a14b", "hunyuanvideo"]
LABELS = {"load": "load", "prompt_encoding": "prompt enc.", "sampling": "sampling", "gradient_step": "grad step"}
GEN_LABELS = {"load": "load", "prompt_encoding": "prompt enc.", "denoising": "denoising", "decode": "decode"}


def _changes(changes: dict) -> str:
    return ", ".join(f"`{k}={str(v).lower() if isinstance(v, bool) else v}`" for k, v in changes.items())


def table(rows: list[dict]) -> str:
    """Tuning: per profile and card, what tune.memory sets, the traced peak per phase."""
    out = ["| profile | card | fits | switches pv sets | load | prompt enc. | sampling | grad step | peak (GiB) "
           "| generation (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["phases_gib"]
        out.append(f"| {r['profile']} | {r['card']} GB | {'yes' if r['fits'] else '**no**'} | "
                   f"{_changes(r['changes']) or '-'} | " + " | ".join(f"{p[k]:.1f}" for k in LABELS)
                   + f" | **{r['peak_gib']:.1f}** | "
                   + (f"{r['generation_gib']:.1f}" if r.get("generation_gib") is not None else "-") + " |")
    return "\n".join(out)


def generation_table(rows: list[dict], planner) -> str:
    """Generation: per profile, the traced peak per phase as shipped (bf16) and with fp8 weights,
    and the card classes each fits."""
    from pvcli.engine.memplan import CARDS, GIB, RESERVE_GIB
    from pvcli.settings import resolve

    out = ["| profile | clip (frames x h x w), steps | weights | load | prompt enc. | denoising | decode | peak (GiB) "
           "| fits |", "|---|---|---|---|---|---|---|---|---|"]
    for profile in dict.fromkeys(r["profile"] for r in rows):
        _, settings = resolve(profile)
        g = next(r for r in rows if r["profile"] == profile)["generation"]
        for weights in ("bf16", "fp8"):
            try:
                trace = planner.generation_trace(settings, weights)
            except LookupError:
                continue
            p = {k: v / GIB for k, v in trace.phases.items()}
            peak = max(p.values())
            fits = [c for c in CARDS if peak <= c - RESERVE_GIB]
            out.append(f"| {profile} | {g['clip']}, {g['steps']} | {weights} | "
                       + " | ".join(f"{p[k]:.1f}" for k in GEN_LABELS) + f" | **{peak:.1f}** | "
                       + (", ".join(f"{c}" for c in fits) + " GB" if fits else "none up to 80 GB") + " |")
    return "\n".join(out)


def smallest_table(rows: list[dict]) -> str:
    """README's profile table: the smallest card class for tuning and for generation, and what pv sets there."""
    out = ["| profile | smallest card to tune (what `tune.memory` sets, traced peak) "
           "| smallest card to generate (traced peak) |", "|---|---|---|"]
    for profile in dict.fromkeys(r["profile"] for r in rows):
        mine = [r for r in rows if r["profile"] == profile]
        tune = next((r for r in mine if r["fits"]), None)
        gen = next((r for r in mine if r["generation"]["fits"]), None)
        t = (f"{tune['card']} GB: {_changes(tune['changes']) or 'as shipped'} ({tune['peak_gib']:.1f} GiB)"
             if tune else "no card up to 80 GB")
        g = (f"{gen['card']} GB: {_changes(gen['generation']['changes']) or 'as shipped'} "
             f"({gen['generation']['peak_gib']:.1f} GiB)" if gen else "no card up to 80 GB")
        out.append(f"| `{profile}` | {t} | {g} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="*", default=DEFAULT)
    ap.add_argument("--cards", nargs="*", type=int, default=None, help="card classes (default: all)")
    ap.add_argument("--fresh", action="store_true", help="trace again what the shipped traces already hold")
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args()
    from pvcli.engine.memplan import CACHE, CARDS, Planner, _read, _write
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import resolve

    planner = Planner(build_plugin_manager(), status=lambda m: print(m, file=sys.stderr))
    if args.fresh:
        planner.cache = {}
    shipped = _read(CACHE)
    rows = []
    for profile in args.profiles:
        _, settings = resolve(profile)
        start = time.perf_counter()
        for card in args.cards or CARDS:
            plan = planner.plan(settings, card)
            rows.append({"profile": profile, "card": card, **plan})
            print(table(rows[-1:]).splitlines()[-1], flush=True)  # each card as it is planned
            shipped.update(planner.cache)
            _write(CACHE, shipped)
        print(f"{profile}: {time.perf_counter() - start:.0f} s, generation {rows[-1]['generation_gib']} GiB",
              file=sys.stderr)
        try:  # both storages of generation, for the generation table
            planner.generation_trace(settings, "fp8")
            shipped.update(planner.cache)
            _write(CACHE, shipped)
        except Exception as exc:  # noqa: BLE001 - a backbone without fp8 storage: its bf16 row only
            print(f"{profile}: no fp8 generation trace ({exc})", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\n" + table(rows) + "\n\n" + generation_table(rows, planner) + "\n\n" + smallest_table(rows))


if __name__ == "__main__":
    main()
