"""ComfyUI workflows (API format) that render an exported identity the way pv does: the base model
up to the identity's gate, the LoRA model after it, each as a `KSamplerAdvanced` stage on one
schedule (start_at_step / end_at_step), the first adding the noise and each stage but the last
handing its leftover noise on, as ComfyUI's own templates chain two experts. A
backbone family's plugin builds its graph from these pieces (`workflows=` at registration); the
node types and input names are checked against ComfyUI's official templates
(tests/data/comfyui_nodes.json)."""

from __future__ import annotations

from dataclasses import dataclass, field

Link = list  # [node id, output index]: an input fed by another node's output


@dataclass
class ComfyWorkflow:
    """An API-format workflow: node id -> {"class_type", "inputs"}, ids counting from 1."""

    nodes: dict[str, dict] = field(default_factory=dict)

    def add(self, class_type: str, **inputs) -> Link:
        """Add a node; returns the link to its first output."""
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    def to_dict(self) -> dict:
        return self.nodes


@dataclass
class Stage:
    """Steps [start, end) of the schedule sampled by `model` (a link to a MODEL output)."""

    model: Link
    start: int
    end: int
    label: str = ""
    cfg: float | None = None  # this stage's guidance (a model of two experts guides each its own); None: the run's


def comfy_sampler(scheduler) -> str:
    """ComfyUI's sampler_name for a diffusers scheduler: UniPC (bh1 = uni_pc, bh2 = uni_pc_bh2),
    Euler (flow matching too), DDIM."""
    name = type(scheduler).__name__
    if name.startswith("UniPC"):
        return "uni_pc_bh2" if scheduler.config.get("solver_type", "bh2") == "bh2" else "uni_pc"
    if name.startswith("DDIM"):
        return "ddim"
    return "euler"


def sample_stages(wf: ComfyWorkflow, stages: list[Stage], *, steps: int, seed: int, cfg: float, sampler: str,
                  positive: Link, negative: Link, latent: Link, scheduler: str = "simple") -> Link:
    """Chain one KSamplerAdvanced per stage (empty stages dropped) over one `steps`-step schedule;
    returns the link to the final latent."""
    stages = [s for s in stages if s.end > s.start]
    for k, stage in enumerate(stages):
        first, last = k == 0, k == len(stages) - 1
        latent = wf.add("KSamplerAdvanced", model=stage.model, add_noise="enable" if first else "disable",
                        noise_seed=int(seed) if first else 0, steps=int(steps),
                        cfg=float(cfg if stage.cfg is None else stage.cfg), sampler_name=sampler,
                        scheduler=scheduler, positive=positive, negative=negative, latent_image=latent,
                        start_at_step=int(stage.start), end_at_step=int(stage.end),
                        return_with_leftover_noise="disable" if last else "enable")
    return latent


def gate_step(meta: dict, scheduler, steps: int) -> tuple[int, float | None]:
    """(the step the identity's adapter turns on at in a `steps`-step schedule of `scheduler`, its
    noise level): the steps at or below the recorded gate; an identity without one, the last
    active_fraction of the steps (pv's rule for it)."""
    from .schedules import adapted_steps, schedule_levels, steps_within_gate

    if meta.get("gate_noise_level"):
        gate = float(meta["gate_noise_level"])
        return steps - steps_within_gate(schedule_levels(scheduler, steps), gate), gate
    return steps - adapted_steps(steps, float(meta.get("active_fraction", 1.0))), None


def gated_model(wf: ComfyWorkflow, unet: Link, lora_name: str, shift: float, switch: int, steps: int
                ) -> tuple[list[Stage], str]:
    """(stages, wiring line) of one diffusion model (`unet`, a loader's output) gated at step
    `switch`: the base model before it, the LoRA on it from there, each with the flow `shift`."""
    stages = []
    if switch > 0:
        stages.append(Stage(wf.add("ModelSamplingSD3", model=unet, shift=shift), 0, switch))
    lora = wf.add("LoraLoaderModelOnly", model=unet, lora_name=lora_name, strength_model=1.0)
    stages.append(Stage(wf.add("ModelSamplingSD3", model=lora, shift=shift), switch, steps))
    return stages, (f"ComfyUI: the base model samples the first {switch} steps, then {lora_name} "
                    f"(LoraLoaderModelOnly) acts from step {switch} of {steps}")
