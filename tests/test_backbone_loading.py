"""The real `animatediff` loader, exercised offline on local folders in the real layout."""

import pytest
import torch

from pvcli.engine.sampling import initial_latents, sample
from pvcli.errors import PVError


def _frames(bb):
    with torch.no_grad():
        lat = initial_latents(bb, 4, 64, 64, torch.Generator().manual_seed(2))
        return bb.decode(sample(bb, bb.encode_prompt(["sks person"]), None, lat, 3, 1.0).latents)


def test_animatediff_loads_local_base_and_motion_adapter_folders(tmp_path, tiny):
    from pv_animatediff.backbone import make_animatediff, save_tiny

    base, motion = save_tiny(tmp_path)
    bb = make_animatediff(options={"base_model": str(base), "motion_adapter": str(motion)}, device="cpu")
    assert bb.name == "animatediff" and bb.dtype == torch.float32
    assert bb.describe()["base_model"] == str(base)
    assert (_frames(bb) - _frames(tiny)).abs().max() < 1e-4  # the same weights, loaded the real way


def test_missing_weights_offline_is_one_clear_error(tmp_path, monkeypatch):
    from pv_animatediff.backbone import make_animatediff

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PVError, match="cannot load motion_adapter 'no-one/nothing' offline .not in the local cache") as exc:
        make_animatediff(options={"motion_adapter": "no-one/nothing"})
    assert "--profile tiny" in exc.value.hint and "hf download" in exc.value.hint
    with pytest.raises(PVError, match="file not found"):
        make_animatediff(options={"base_model": str(tmp_path / "missing.safetensors")})
    with pytest.raises(PVError, match="dtype must be"):
        make_animatediff(options={"dtype": "float8"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    from pv_animatediff.backbone import make_tiny

    with pytest.raises(PVError, match="CUDA is not available"):
        make_tiny(device="cuda")


def test_single_file_checkpoint_loads_offline_with_configs_passed_explicitly(tmp_path):
    """A community-style single file (original key layout) written from the tiny model loads with
    no hub, and draws what the tiny model in diffusers layout draws."""
    from ldm_format import text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
    from pv_animatediff.backbone import build_tiny_components, make_animatediff, save_tiny
    from safetensors.torch import save_file

    base, motion = save_tiny(tmp_path)  # the diffusers-layout folders: configs + the motion adapter
    c = build_tiny_components()
    ckpt = tmp_path / "community_model.safetensors"
    save_file({**unet_to_ldm(c["unet2d"]), **vae_to_ldm(c["vae"]), **text_encoder_to_ldm(c["text_encoder"])}, str(ckpt))
    opts = {"motion_adapter": str(motion), "dtype": "float32"}
    single = make_animatediff({**opts, "base_model": str(ckpt), "single_file_config": str(base)}, device="cpu")
    folder = make_animatediff({**opts, "base_model": str(base)}, device="cpu")
    assert (_frames(single) - _frames(folder)).abs().max() < 1e-5


def test_single_file_of_another_shape_gets_one_line_naming_the_config_option(tmp_path):
    from ldm_format import text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
    from pv_animatediff.backbone import build_tiny_components, make_animatediff, save_tiny
    from safetensors.torch import save_file

    _, motion = save_tiny(tmp_path)
    c = build_tiny_components()
    ckpt = tmp_path / "tiny.safetensors"
    save_file({**unet_to_ldm(c["unet2d"]), **vae_to_ldm(c["vae"]), **text_encoder_to_ldm(c["text_encoder"])}, str(ckpt))
    with pytest.raises(PVError, match="single_file_config") as err:  # the shipped SD 1.5 configs do not fit a tiny model
        make_animatediff({"motion_adapter": str(motion), "base_model": str(ckpt), "dtype": "float32"}, device="cpu")
    assert "\n" not in str(err.value)


def test_shipped_single_file_configs_describe_the_real_architectures():
    """The configs that ship for offline single files build SD 1.5's and SDXL's real modules (on
    the meta device: no memory), and the CLIP tokenizer built from the shipped BPE is CLIP's."""
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from pv_animatediff.single_file import CONFIGS, clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with init_empty_weights():
        sd15 = UNet2DConditionModel.from_config(json.loads((CONFIGS / "sd15/unet/config.json").read_text()))
        sdxl = UNet2DConditionModel.from_config(json.loads((CONFIGS / "sdxl/unet/config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((CONFIGS / "sd15/vae/config.json").read_text()))
        clip = CLIPTextModel(CLIPTextConfig(**json.loads((CONFIGS / "sd15/text_encoder/config.json").read_text())))
    assert round(count(sd15) / 1e6, 1) == 859.5  # SD 1.5's UNet
    assert round(count(sdxl) / 1e6) == 2567  # SDXL base's UNet
    assert round(count(vae) / 1e6, 1) == 83.7
    assert round(count(clip) / 1e6, 1) == 123.1  # CLIP ViT-L/14's text tower
    tok = clip_tokenizer()
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer("!").pad_token_id == 0


def test_few_step_loading_options_motion_module_file_base_lora_and_sampler(tmp_path):
    """What the AnimateDiff-Lightning and AnimateLCM profiles use, on tiny local files: a motion
    module file in diffusers keys, a LoRA fused into the base, and the family's sampler."""
    from pv_animatediff.backbone import make_animatediff, make_tiny, save_tiny
    from safetensors.torch import save_file

    from pvcli.engine.adapter import adapter_state_dict, add_adapter, set_adapter_scale
    from pvcli.jobs.export import diffusers_lora

    base, motion = save_tiny(tmp_path)
    from diffusers import MotionAdapter

    save_file(MotionAdapter.from_pretrained(motion).state_dict(), str(motion / "lightning_diffusers.safetensors"))
    lora_bb = make_tiny()
    add_adapter(lora_bb, "attention", 4, 4)
    with torch.no_grad():
        for name, p in lora_bb.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    set_adapter_scale(lora_bb.unet, 0.5)
    tensors, header = diffusers_lora(adapter_state_dict(lora_bb.unet), {"rank": 4, "alpha": 4})
    save_file(tensors, str(tmp_path / "distill_lora.safetensors"), metadata=header)

    bb = make_animatediff({"base_model": str(base), "motion_adapter": str(motion),
                           "motion_adapter_weight_name": "lightning_diffusers.safetensors", "scheduler": "euler-trailing",
                           "base_lora": str(tmp_path / "distill_lora.safetensors"), "base_lora_scale": 0.5,
                           "dtype": "float32"}, device="cpu")
    assert type(bb.scheduler).__name__ == "EulerDiscreteScheduler" and bb.scheduler.config.timestep_spacing == "trailing"
    assert bb.describe()["motion_adapter"].endswith("lightning_diffusers.safetensors")
    assert not [n for n, _ in bb.unet.named_modules() if "lora" in n.lower()]  # fused: no LoRA layers left
    ref = make_tiny({"scheduler": "euler-trailing"})
    ref.unet = lora_bb.unet  # the same weights with the LoRA applied at 0.5, unfused
    assert (_frames(bb) - _frames(ref)).abs().max() < 1e-4
    with pytest.raises(PVError, match="not a diffusers-format motion module"):
        save_file({"x": torch.zeros(1)}, str(motion / "bad.safetensors"))
        make_animatediff({"base_model": str(base), "motion_adapter": str(motion),
                          "motion_adapter_weight_name": "bad.safetensors"}, device="cpu")
