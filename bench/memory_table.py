"""The tuning step of each traced profile on each card class (12, 16, 24, 48, 80 GB): whether it fits,
with which memory switches, the traced peak per phase, and the traced peak of generation; written
into the traces pv ships (pvcli/engine/memory_traces.json, what `pv profiles` reads) and printed as
BENCHMARKS.md's table. Traces on the meta device (pvcli/engine/memtrace.py): no weights, no GPU.

Run: python bench/memory_table.py [--profiles wan2.1-14b ...] [--fresh] (minutes per real profile)."""

from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULT = ["tiny-wan", "tiny-hunyuan", "wan2.1-1.3b", "wan2.2-5b", "wan2.1-14b", "wan2.2-a14b", "hunyuanvideo"]
LABELS = {"load": "load", "prompt_encoding": "prompt enc.", "sampling": "sampling", "gradient_step": "grad step"}


def table(rows: list[dict]) -> str:
    out = ["| profile | card | fits | switches pv sets | load | prompt enc. | sampling | grad step | peak (GiB) "
           "| generation (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["phases_gib"]
        changes = ", ".join(f"`{k}={str(v).lower() if isinstance(v, bool) else v}`" for k, v in r["changes"].items())
        out.append(f"| {r['profile']} | {r['card']} GB | {'yes' if r['fits'] else '**no**'} | {changes or '-'} | "
                   + " | ".join(f"{p[k]:.1f}" for k in LABELS) + f" | **{r['peak_gib']:.1f}** | "
                   + (f"{r['generation_gib']:.1f}" if r.get("generation_gib") is not None else "-") + " |")
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows).splitlines()[0], file=sys.stderr)


if __name__ == "__main__":
    main()
