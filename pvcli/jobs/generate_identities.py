"""Several tuned identities in one clip (`pv generate PROMPT --id alice --id bob`): each identity's
adapter loaded under its own name into one backbone, each acting in its own region of the frame
(pvcli.engine.regions), each gated as in its own clips. The clip's record names the regions, so
`pv eval CLIP --id alice --id bob` checks each face against them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..context import Context
from ..errors import PVError
from ..settings import GenerateSettings
from .generate import IdentityRenderer, check_backbone_matches

PRESETS = ("left-right", "top-bottom")
AUTO_GROW = (1.0, 0.6, 1.0, 2.5)  # a face box grown to a person's region: left, up, right, down (x its size)
REGION_MODES = ("latent", "layer")
SPEC_HELP = "--id NAME, NAME:WEIGHT, NAME=box:x1,y1,x2,y2 or NAME:WEIGHT=box:... (fractions of the frame)"


@dataclass
class Member:
    name: str
    weight: float = 1.0
    box: tuple[float, float, float, float] | None = None


def parse_member(spec: str) -> Member:
    """"alice", "alice:0.8", "alice=box:0,0,0.5,1", "alice:0.8=box:0,0,0.5,1"."""
    import math

    from ..engine.face_assignment import check_regions

    head, sep, region = str(spec).partition("=")
    name, colon, weight = head.partition(":")
    name = name.strip()
    if not name:
        raise PVError(f"--id {spec!r} names no identity", SPEC_HELP)
    member = Member(name)
    if colon:
        try:
            member.weight = float(weight)
        except ValueError:
            raise PVError(f"--id {spec}: the weight {weight!r} is not a number", SPEC_HELP) from None
        if not math.isfinite(member.weight) or not 0 <= member.weight <= 4:
            raise PVError(f"--id {spec}: the weight must be between 0 and 4, got {weight}", SPEC_HELP)
    if sep:
        kind, _, numbers = region.partition(":")
        if kind.strip() != "box":
            raise PVError(f"--id {spec}: a region is box:x1,y1,x2,y2, got {region!r}", SPEC_HELP)
        member.box = check_regions([numbers.split(",")], f"--id {name}: box")[0]
    return member


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def group_boxes(members: list[Member], layout: str) -> list:
    """Every member's box: the explicit ones (all or none), else the layout preset's strips in order."""
    from ..engine.face_assignment import layout_regions

    given = [m.box for m in members if m.box is not None]
    if given and len(given) != len(members):
        raise PVError("give a box for every --id or for none", "e.g. --id alice=box:0,0,0.5,1 --id bob=box:0.5,0,1,1")
    if given:
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if _overlap(a.box, b.box) > 1e-9:
                    raise PVError(f"the boxes of {a.name} and {b.name} overlap",
                                  "each person needs a region of their own (boxes may touch)")
        return given
    if layout == "auto":
        return []  # found per clip, in a first pass (GroupRenderer)
    if layout not in PRESETS:
        raise PVError(f"unknown --layout {layout!r}", f"layouts: {', '.join(PRESETS)}, or boxes in --id")
    return layout_regions(len(members), layout)


def check_group(ctx: Context, members: list[Member], layout: str, region_mode: str) -> list:
    """Before any model loads: known, distinct identities tuned on one backbone, regions that make
    sense. Returns the boxes."""
    if region_mode not in REGION_MODES:
        raise PVError(f"unknown --region-mode {region_mode!r}", f"modes: {', '.join(REGION_MODES)}")
    seen = set()
    backbones = {}
    for m in members:
        if m.name in seen:
            raise PVError(f"--id {m.name} is given twice", "one --id per person")
        seen.add(m.name)
        if not ctx.store.exists(m.name):
            raise PVError(f"no identity named {m.name!r}", f"identities: {', '.join(ctx.store.names()) or 'none yet'}")
        backbones[m.name] = ctx.store.load_info(m.name).get("backbone")
    if len(set(backbones.values())) > 1:
        detail = ", ".join(f"{n} on {b}" for n, b in backbones.items())
        raise PVError(f"the identities were tuned on different backbones ({detail})",
                      "identities in one clip must share a backbone: re-tune one of them on the other's profile")
    return group_boxes(members, layout)


def group_prompt(prompt: str, phrases: dict[str, str]) -> str:
    """Each identity's name in the prompt ({alice} or the bare word alice) becomes its phrase; one identity
    that the prompt does not name gets its phrase as in its own clips."""
    from ..engine.prompts import with_identity

    text, named = prompt, False
    for name, phrase in phrases.items():
        pattern = re.compile(rf"\{{{re.escape(name)}\}}|(?<![\w-]){re.escape(name)}(?![\w-])")
        text, count = pattern.subn(phrase, text)
        named = named or count > 0
    if not named and len(phrases) == 1:
        return with_identity(prompt, next(iter(phrases.values())))
    return text


def regions_from_faces(faces_per_frame: list[list], n: int, height: int, width: int, warn) -> list:
    """`--layout auto`: the people a first pass drew, left to right, one region each. Frames with at
    least n faces vote: their n largest faces, sorted by centre x, give each rank a box (the union over
    frames, grown from the face to the person: AUTO_GROW), and neighbours are split halfway where they
    overlap. A rank no frame shows falls back to its left-right strip, with a warning."""
    from ..engine.face_assignment import layout_regions

    ranks: list[list] = [[] for _ in range(n)]
    for faces in faces_per_frame:
        if len(faces) < n:
            continue
        largest = sorted(faces, key=lambda f: -f.area)[:n]
        for r, f in enumerate(sorted(largest, key=lambda f: f.box[0] + f.box[2])):
            ranks[r].append(f.box)
    strips = layout_regions(n)
    if not ranks[0]:
        most = max((len(f) for f in faces_per_frame), default=0)
        warn(f"--layout auto: the first pass shows {most} face(s) for {n} identities in every frame; "
             "using left-right strips")
        return strips
    boxes = []
    for boxes_r in ranks:
        x1, y1 = min(b[0] for b in boxes_r), min(b[1] for b in boxes_r)
        x2, y2 = max(b[2] for b in boxes_r), max(b[3] for b in boxes_r)
        fw, fh = x2 - x1, y2 - y1
        gl, gu, gr, gd = AUTO_GROW
        boxes.append([max(0.0, (x1 - gl * fw) / width), max(0.0, (y1 - gu * fh) / height),
                      min(1.0, (x2 + gr * fw) / width), min(1.0, (y2 + gd * fh) / height)])
    for a, b in zip(boxes, boxes[1:], strict=False):  # neighbours meet halfway where they overlap
        if a[2] > b[0]:
            a[2] = b[0] = (a[2] + b[0]) / 2
    return [tuple(b) for b in boxes]


class GroupRenderer(IdentityRenderer):
    """Several identities loaded once into one backbone; renders clips with each in its region.
    Without boxes (`--layout auto`) each clip first renders without the identities, the encoder of
    the first identity finds the people's faces in it, and the clip renders again from the same noise
    with a region per person (regions_from_faces)."""

    def __init__(self, ctx: Context, members: list[Member], settings, boxes: list, feather: float | None = None,
                 region_mode: str = "latent"):
        from ..engine.adapter import add_adapter, load_adapter_state_dict, saved_layers
        from ..engine.prompts import identity_phrase
        from ..engine.regions import FEATHER
        from ..identity_files import read_adapter
        from .resources import build_backbone

        self.ctx, self.settings, self.members, self.boxes = ctx, settings, members, boxes
        self.feather = FEATHER if feather is None else feather
        self.region_mode = region_mode
        self.name = "+".join(m.name for m in members)
        for m in members:
            info = ctx.store.load_info(m.name)
            check_backbone_matches(info, settings.backbone.name, m.name)
            if info.get("adapter_parts"):  # region mixing drives the adapters on one denoiser
                raise PVError(f"identity {m.name!r} has its adapter on several denoisers ({info.get('expert', '')}), "
                              "which several identities in one clip cannot mix yet",
                              f"render {m.name} alone, or tune it with its adapter on one denoiser")
        self.backbone = build_backbone(ctx, settings)
        self.adapters, self.fractions, self.gates, self.phrases = [], [], [], {}
        for k, m in enumerate(members):
            state, meta = read_adapter(ctx.store.path(m.name))
            adapter = f"pv_person{k + 1}"
            add_adapter(self.backbone, meta.get("targets", settings.adapter.targets), int(meta["rank"]),
                        float(meta["alpha"]), adapter_name=adapter, layers=saved_layers(state))
            load_adapter_state_dict(self.backbone.adapted, state, adapter)
            self.adapters.append(adapter)
            self.fractions.append(float(meta.get("active_fraction", 1.0)))
            self.gates.append(float(meta["gate_noise_level"]) if meta.get("gate_noise_level") else None)
            self.phrases[m.name] = identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person"))

    def full_prompt(self, prompt: str) -> str:
        return group_prompt(prompt, self.phrases)

    def auto_boxes(self, prompt: str, g: GenerateSettings, plan) -> list:
        from ..engine.generate import generate_frames
        from ..engine.metrics import detect_faces

        if getattr(self, "_finder", None) is None:
            name = self.ctx.store.load_info(self.members[0].name).get("encoder") or "facenet"
            self._finder = self.ctx.registry.create("encoders", name, options={}, device=self.ctx.device or "cpu")
        self.ctx.reporter.status("--layout auto: a first pass without the identities, to find the people")
        first = generate_frames(self.backbone, prompt, g, plan=plan, adapter_scale=0.0).numpy()
        faces = [detect_faces(self._finder, frame) for frame in first]
        return regions_from_faces(faces, len(self.members), first.shape[1], first.shape[2], self.ctx.reporter.warn)

    def frames(self, prompt: str, g: GenerateSettings, plan, adapter: bool, on_step):
        from ..engine.generate import denoising_steps, gate_switch, gated_steps, generate_frames, plan_strength
        from ..engine.regions import LayerMixer, Person, RegionMixer
        from ..engine.sampling import adapted_steps

        boxes = self.boxes or self.auto_boxes(prompt, g, plan)
        run = denoising_steps(g.steps, plan_strength(plan))
        # each identity's own gate: its noise level where it recorded one, else its step fraction
        adapted = [gated_steps(self.backbone, g.steps, run, gate) if gate is not None
                   else min(adapted_steps(g.steps, f), run) for gate, f in zip(self.gates, self.fractions, strict=True)]
        people = [Person(a, (m.weight * g.adapter_scale) if adapter else 0.0, gate_switch(run, n))
                  for a, m, n in zip(self.adapters, self.members, adapted, strict=True)]
        mixer = (LayerMixer if self.region_mode == "layer" else RegionMixer)(self.backbone, people, boxes,
                                                                             plan.loras, self.feather)
        frames = generate_frames(self.backbone, prompt, g, on_step=on_step, plan=plan, regions=mixer)
        if not mixer.calls and any(p.scale for p in people):
            raise PVError("this backbone's pipeline did not run the identities' regions (it calls another module)",
                          "generate the identities one at a time")
        regions = [{"identity": m.name, "box": list(b), "weight": p.scale, "active_fraction": f,
                    "gate_noise_level": gate, "adapted_steps": n}
                   for m, b, p, f, gate, n in zip(self.members, boxes, people, self.fractions, self.gates, adapted,
                                                  strict=True)]
        # "identity" is one identity's name in a single clip's record: a group clip names its identities
        return frames, {"identity": None, "identities": [m.name for m in self.members], "region_mode": self.region_mode,
                        "layout": "auto" if not self.boxes else "given",
                        "feather": self.feather, "regions": regions, "adapter_scale": g.adapter_scale if adapter else 0.0}
