"""The memory trace against measurements on real modules: the bytes autograd keeps for backward by the
real Wan 1.3B transformer and the real Wan VAE decoder, traced on the meta device (pvcli/engine/memtrace.py:
MemTracker, attention as the fused kernels hold it) beside what bench/wan_size.py measured with
saved-tensor hooks on random-weight modules in fp32 (bench/wan_size.json, BENCHMARKS.md).

Run: python bench/trace_check.py (about 20 s)."""

from __future__ import annotations

import json
from pathlib import Path

MEASURED = Path(__file__).with_name("wan_size.json")


def _kept(module, fn) -> float:
    """MiB the graph holds after `fn` (its output included), traced."""
    from pvcli.engine.memtrace import _tracker_class, fused_attention

    tracker = _tracker_class()()
    tracker.track_external(module)
    with tracker, fused_attention():
        base = tracker.total()
        out = fn()  # noqa: F841 (kept alive: the graph hangs on it)
        after = tracker.total()
    return (after - base) / 2**20


def check(names: tuple[str, ...] | None = None) -> list[tuple[str, float, float]]:
    """(measurement name, traced MiB, measured MiB) for `names` of wan_size.json's measured_mb_fp32."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from peft import LoraConfig
    from pv_animatediff.backbone import quiet_libraries
    from pv_wan.backbone import TARGETS
    from pv_wan.configs import TRANSFORMERS

    quiet_libraries()
    measured = json.loads(MEASURED.read_text())["measured_mb_fp32"]
    names = names or tuple(measured)
    meta = torch.device("meta")
    out = []
    if any(n.startswith("transformer") for n in names):
        with init_empty_weights():
            t = WanTransformer3DModel(**TRANSFORMERS["wan2.1-1.3b"])
        t.to(meta).requires_grad_(False)
        t.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS["attention"], init_lora_weights="gaussian"))
        for n, p in t.named_parameters():
            p.requires_grad_("lora" in n)
        text = torch.empty(1, 512, 4096, device=meta)
        for ckpt in (False, True):
            if ckpt:
                t.enable_gradient_checkpointing()
            t.train()
            for frames, side in ((1, 16), (2, 16), (2, 32)):
                name = f"transformer {frames * (side // 2) ** 2} {ckpt}"
                if name in names:
                    lat = torch.empty(1, 16, frames, side, side, device=meta)
                    out.append((name, _kept(t, lambda lat=lat: t(hidden_states=lat, timestep=torch.tensor([500], device=meta),
                                                                 encoder_hidden_states=text, return_dict=False)[0]),
                                measured[name]))
    if any(n.startswith("vae") for n in names):
        with init_empty_weights():
            vae = AutoencoderKLWan()
        vae.to(meta).requires_grad_(False)
        for px in (64, 128):
            for frames in (1, 2):
                name = f"vae {px} {frames} False"
                if name in names:
                    lat = torch.empty(1, 16, frames, px // 8, px // 8, device=meta, requires_grad=True)
                    out.append((name, _kept(vae, lambda lat=lat: vae.decode(lat, return_dict=False)[0]), measured[name]))
    return out


def main() -> None:
    print("| component (fp32) | traced | measured (saved-tensor hooks) | difference |")
    print("|---|---|---|---|")
    for name, traced, measured in check():
        print(f"| {name} | {traced:.1f} MB | {measured:.1f} MB | {100 * (traced - measured) / measured:+.1f}% |")


if __name__ == "__main__":
    main()
