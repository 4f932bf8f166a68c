import pytest
import yaml

from pvcli.errors import PVError
from pvcli.settings import parse_set, resolve, shipped_profiles


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_every_shipped_profile_validates(name):
    prof, s = resolve(name)
    assert prof == name and s.backbone.name and s.encoder.name
    assert s.tune.height % 8 == 0 and s.generate.frames >= 1


def test_every_shipped_profile_tunes_at_the_guidance_it_generates_with():
    """The adapter learns on the trajectories it will be used on: the same classifier-free guidance."""
    for name in shipped_profiles():
        s = resolve(name)[1]
        assert s.tune.guidance_scale == s.generate.guidance_scale, name


def test_every_shipped_profile_tunes_at_the_second_experts_guidance_it_generates_with():
    """The same for a second expert's scale; A14B follows Wan 2.2's recipe (4.0 high-noise, 3.0 low-noise)."""
    for name in shipped_profiles():
        s = resolve(name)[1]
        assert s.tune.guidance_scale_2 == s.generate.guidance_scale_2, name
    s = resolve("wan2.2-a14b")[1]
    assert (s.generate.guidance_scale, s.generate.guidance_scale_2, s.backbone.options["flow_shift"]) == (4.0, 3.0, 12.0)
    with pytest.raises(PVError, match=r"generate.guidance_scale_2 \(3\) needs generate.guidance_scale above 1"):
        resolve("tiny-wan", [parse_set(["generate.guidance_scale_2=3", "generate.guidance_scale=1"])])
    with pytest.raises(PVError, match="tune.guidance_scale_2 must be >= 0.0"):
        resolve("tiny-wan", [parse_set(["tune.guidance_scale_2=-1"])])


def test_defaults_are_the_real_gpu_profile():
    _, s = resolve(None)
    assert s.backbone.name == "animatediff"
    assert (s.generate.height, s.generate.frames, s.generate.fps, s.adapter.rank) == (512, 16, 8, 16)
    assert 25 <= s.generate.steps <= 30 and s.adapter.targets == "attention"


def test_layers_apply_in_order_and_yaml_floats_parse(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({"tune": {"lr": "1e-4", "steps": 7}}))
    _, s = resolve(str(p), [parse_set(["tune.steps=9", "generate.negative_prompt=ugly"]), {"tune": {"seed": 4}}])
    assert s.tune.lr == pytest.approx(1e-4) and isinstance(s.tune.lr, float)
    assert (s.tune.steps, s.tune.seed, s.generate.negative_prompt) == (9, 4, "ugly")


@pytest.mark.parametrize("item,message", [
    ("tune.nope=1", "unknown setting 'tune.nope'"),
    ("tune.steps=abc", "tune.steps must be an integer"),
    ("tune.lr=fast", "tune.lr must be a number"),
    ("adapter.targets=all", "adapter.targets must be one of attention, spatial"),
    ("tune.grad_steps=99", "cannot exceed"),
    ("generate.fps=0", "generate.fps must be between"),
    ("novalue", "--set expects key=value"),
])
def test_bad_values_are_refused(item, message):
    with pytest.raises(PVError, match=message):
        resolve("tiny", [parse_set([item])])
