"""Memory plans: `pv tune --dry-run` (the traced peak per phase, what pv will do to fit the card,
the step's estimated time; offline, nothing loads), `tune.memory` at the start of a tuning run,
and the per-card numbers `pv profiles` shows."""

from __future__ import annotations

import sys

from ..context import Context
from ..errors import PVError
from ..settings import Settings, parse_memory

PHASE_LABELS = {"load": "load", "prompt_encoding": "prompt encoding", "sampling": "sampling",
                "gradient_step": "gradient step", "denoising": "denoising", "decode": "decode"}


def planner(ctx: Context):
    from ..engine.memplan import Planner

    return Planner(ctx.registry, ctx.store.home, ctx.reporter.status)


def card_gib(ctx: Context, settings: Settings, gpu_memory=None) -> tuple[float | None, str]:
    """The card to plan for and where that number came from: --gpu-memory, a number in
    tune.memory, or the free memory of the CUDA device pv would tune on (None without one)."""
    from ..engine.memplan import detect_gpu_gib

    if gpu_memory is not None:
        return parse_memory(gpu_memory, "--gpu-memory"), "--gpu-memory"
    given = parse_memory(settings.tune.memory)
    if given is not None:
        return given, "tune.memory"
    found = detect_gpu_gib(ctx.device)
    return (found, "free memory of this GPU") if found is not None else (None, "no CUDA GPU here")


def dry_run(ctx: Context, settings: Settings, profile: str, gpu_memory=None) -> dict:
    """The plan for one card (or for every card class when none is known), from traces."""
    from ..engine.memplan import CARDS

    t = settings.tune
    gib, source = card_gib(ctx, settings, gpu_memory)
    p = planner(ctx)
    head = {"profile": profile, "backbone": settings.backbone.name,
            "tuning_clip": f"{t.frames}x{t.height}x{t.width}", "grad_steps": t.grad_steps}
    if gib is not None:
        return {**head, "card": source, **p.plan(settings, gib), "traced_now": p.traced}
    cards = {str(c): p.plan(settings, c) for c in CARDS}
    return {**head, "card": source, "gpu_memory_gib": None, "cards": cards, "traced_now": p.traced}


def describe(plan: dict) -> str:
    """The dry run for people: a few lines."""
    if plan.get("cards") is not None:
        lines = [f"{plan['profile']}: tuning clip {plan['tuning_clip']} ({plan['card']}: every card class)"]
        for card, sub in plan["cards"].items():
            lines.append(f"  {card:>3} GB: {_one(sub)}")
        for card, sub in plan["cards"].items():
            if sub.get("generation"):
                lines.append(f"  {card:>3} GB: {_generation(sub['generation'])}")
        return "\n".join([*lines, *_notes(next(iter(plan["cards"].values())))])
    lines = [f"{plan['profile']}: tuning clip {plan['tuning_clip']} on a {plan['gpu_memory_gib']:g} GiB card "
             f"({plan['card']}): {_one(plan)}"]
    phases = " | ".join(f"{PHASE_LABELS[k]} {v:.1f}" for k, v in plan["phases_gib"].items())
    lines.append(f"  traced peak per phase (GiB): {phases}")
    lines.append(f"  estimated step time: ~{plan['step_seconds']:g} s ({plan['step_tflop']:g} TFLOP; "
                 f"{plan['step_time_assumes']})")
    if plan.get("generation"):
        g = plan["generation"]
        lines.append(f"  {_generation(g)}")
        phases = " | ".join(f"{PHASE_LABELS[k]} {v:.1f}" for k, v in g["phases_gib"].items())
        lines.append(f"  generation's traced peak per phase (GiB): {phases}")
    return "\n".join([*lines, *_notes(plan)])


def _generation(g: dict) -> str:
    changes = changes_text(g["changes"])
    verdict = (f"fits, traced peak {g['peak_gib']:.1f} GiB" + (f" with {changes}" if changes else "") if g["fits"] else
               f"does not fit (traced peak {g['peak_gib']:.1f} GiB" + (f" even with {changes}" if changes else "") + ")")
    return f"generation of {g['clip']} ({g['steps']} steps): {verdict}"


def _one(plan: dict) -> str:
    verdict = (f"fits, traced peak {plan['peak_gib']:.1f} of {plan['usable_gib']:.1f} GiB usable" if plan["fits"] else
               f"does not fit: traced peak {plan['peak_gib']:.1f} GiB with every switch on, {plan['usable_gib']:.1f} usable")
    changes = changes_text(plan["changes"], plan.get("costs", {}))
    return f"{verdict}; {'pv will set ' + changes if changes else 'as the settings are'}"


def changes_text(changes: dict, costs: dict | None = None) -> str:
    return ", ".join(f"{k}={_show(v)}" + (f" ({costs[k]})" if costs and k in costs else "") for k, v in changes.items())


def _notes(plan: dict) -> list[str]:
    return [f"  note: {n}" for n in plan.get("notes", [])]


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def apply_changes(settings: Settings, changes: dict) -> Settings:
    """The settings with the plan's switches set; a switch this pv does not have is one line."""
    from ..engine.memplan import with_changes

    try:
        return with_changes(settings, changes)
    except PVError as exc:
        raise PVError(f"tune.memory chose {changes_text(changes)}, which this pv cannot set ({exc.message})",
                      "set tune.memory to a larger number of GiB, or lower tune.frames/height/width") from None


def fit_to_card(ctx: Context, settings: Settings) -> tuple[Settings, dict | None]:
    """`tune.memory`: on a CUDA card (or for a given GiB number) the cheapest switches whose traced
    peak fits, said in one line on stderr; (settings to tune with, the plan's record or None)."""
    gib, source = card_gib(ctx, settings)
    if gib is None:
        return settings, None
    entry = ctx.registry.get("backbones", settings.backbone.name)
    if entry.memory is None:
        return settings, None
    plan = planner(ctx).plan(settings, gib, generation=False)
    if not plan["fits"]:
        raise PVError(f"this tuning step does not fit {gib:.1f} GiB ({source}): traced peak {plan['peak_gib']:.1f} GiB "
                      f"with every memory switch on, {plan['usable_gib']:.1f} GiB usable",
                      "lower tune.frames / tune.height / tune.width, or tune on a larger card "
                      "(pv tune PHOTO --name N --dry-run shows every card class)")
    record = {"gpu_memory_gib": plan["gpu_memory_gib"], "source": source, "changes": plan["changes"],
              "peak_gib": plan["peak_gib"], "phases_gib": plan["phases_gib"]}
    chosen = changes_text(plan["changes"]) or "no switch needed"
    print(f"tune.memory: {gib:.1f} GiB ({source}): {chosen}; traced peak {plan['peak_gib']:.1f} GiB",
          file=sys.stderr)
    return (apply_changes(settings, plan["changes"]) if plan["changes"] else settings), record




def memory_hint(ctx: Context, settings: Settings, job: str, device=None) -> str:
    """pv's memory plan's part of an out-of-memory error's one line (resources.out_of_memory_hint
    puts it first), for tuning (`job` "tune") or generating ("generate") with `settings` on `device`:
    planned for that card's total memory from the traces, the switches `tune.memory=auto` would set
    there; where the trace says the settings fit it already (another process's memory, the
    allocator's fragmentation), the tune.memory number a GiB under what the traced peak needs, and
    what the plan for it adds; for generation, fp8 weights where they fit. "" off CUDA, for a
    backbone without a memory model, where nothing fits, or if planning fails (the general advice
    then stands alone). The family's own advice is added beside it by the caller, not here."""
    import torch

    from ..engine.memplan import RESERVE_GIB

    try:
        if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return ""
        if ctx.registry.get("backbones", settings.backbone.name).memory is None:
            return ""
        card = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        p = planner(ctx)
        if job == "generate":
            g = p.generation(settings, card)
            return f"set {changes_text(g['changes'])} (traced: {g['peak_gib']:.1f} GiB)" if g["fits"] and g["changes"] \
                else ""
        plan = p.plan(settings, card, generation=False)
        if plan["fits"] and plan["changes"]:
            return (f"set {changes_text(plan['changes'])} (what tune.memory=auto picks for this {card:.0f} GiB card; "
                    f"traced peak {plan['peak_gib']:.1f} GiB)")
        target = int(plan["peak_gib"] + RESERVE_GIB) - 1  # a card a GiB smaller than the one the step just needs
        smaller = p.plan(settings, target, generation=False) if target > RESERVE_GIB else None
        if smaller is not None and smaller["fits"] and smaller["changes"]:
            return f"set tune.memory={target} (its plan adds {changes_text(smaller['changes'])} to what ran)"
        return ""
    except Exception:  # noqa: BLE001 - advice only: the error it joins is raised whatever happens here
        return ""
