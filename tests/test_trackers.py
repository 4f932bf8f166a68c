"""`pv tune --report-to tensorboard|wandb`: every step's scalars, the samples as videos, the settings
as hyperparameters, the same run continued on resume; a missing library is one line before any
model loads."""

import glob
import io
import json
import struct
import sys

import pytest
from conftest import NO_HELD_OUT, press_ctrl_c_at, run
from PIL import Image

TINY = ("--profile", "tiny", *NO_HELD_OUT, "--set", "generate.frames=4", "--set", "tune.sample_every=1", "--quiet")


def _log(home, name):
    return [json.loads(ln) for ln in (home / "identities" / name / "log.jsonl").read_text().splitlines()]


def test_tensorboard_logs_scalars_samples_and_settings_and_resume_continues_the_run(astronaut, pv_home, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    release = press_ctrl_c_at(monkeypatch, 1)  # step 1 is logged, then Ctrl-C
    r = run("tune", astronaut, "--name", "tb", "--steps", "2", "--report-to", "tensorboard", *TINY)
    assert r.exit_code == 130, r.stderr
    state = json.loads((pv_home / "runs" / "tb" / "tracker.json").read_text())
    release()
    r = run("tune", "--resume", "tb", "--json")  # keeps the run's tracker, and its log folder
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["tracker"] == {"report_to": "tensorboard", "run_id": state["run_id"]}

    runs = glob.glob(str(pv_home / "logs" / "tensorboard" / "tb" / "*"))
    assert runs == [state["log_dir"]]  # one run folder: the resume continued it
    acc = EventAccumulator(state["log_dir"], size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    log = _log(pv_home, "tb")
    loss = {e.step: e.value for e in acc.Scalars("loss")}
    assert loss == pytest.approx({rec["step"]: rec["loss"] for rec in log}) and sorted(loss) == [1, 2]
    for tag in ("id_sim", "face_hit_rate", "lr", "seconds", "peak_memory_mb"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    samples = acc.Images("sample")
    assert [e.step for e in samples] == [1, 2]
    for e in samples:
        gif = Image.open(io.BytesIO(e.encoded_image_string))
        assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (64, 64)
    hparams = acc.PluginTagToContent("hparams")
    assert hparams and any(b"tune.lr" in content for content in hparams.values())
    assert "settings/text_summary" in acc.Tags()["tensors"]

    # the identity keeps the samples, and its report shows them step by step
    r = run("report", "tb", "-o", pv_home / "tb.html", "--json")
    assert r.exit_code == 0, r.stderr
    written = json.loads(r.stdout)
    assert written["samples"] == 2 and written["images"] == 6  # photo, crop, curves, 2 samples, first frames
    text = (pv_home / "tb.html").read_text()
    assert 'alt="sample at step 1"' in text and 'alt="sample at step 2"' in text


def _wandb_records(path):
    """The protobuf records of a W&B run file (a LevelDB-style log: 7-byte header, then 32 KiB
    blocks of chunks, each with crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, records, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            partial = (b"" if kind == 2 else partial) + chunk
        elif kind == 4:
            records.append(partial + chunk)
    out = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        out.append(rec)
    return out


def test_wandb_offline_run_holds_the_scalars_settings_and_sample(astronaut, pv_home, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    r = run("tune", astronaut, "--name", "wb", "--steps", "1", "--report-to", "wandb", *TINY)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "wb\n"  # W&B's console output never reaches stdout
    run_id = json.loads((pv_home / "identities" / "wb" / "identity.json").read_text())["tracker"]["run_id"]
    files = glob.glob(str(pv_home / "logs" / "wandb" / "wb" / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
               for rec in records if rec.WhichOneof("record_type") == "history"]
    config = {i.key: json.loads(i.value_json) for rec in records if rec.WhichOneof("record_type") == "config"
              for i in rec.config.update}
    loss = _log(pv_home, "wb")[0]["loss"]
    step1 = [h for h in history if h.get("_step") == 1]
    assert step1 and step1[0]["loss"] == pytest.approx(loss) and "id_sim" in step1[0] and "lr" in step1[0]
    assert step1[0]["sample/_type"] == "video-file"
    assert config["tune.steps"] == 1 and config["tune.report_to"] == "wandb" and config["backbone.name"] == "animatediff-tiny"
    assert glob.glob(str(pv_home / "logs" / "wandb" / "wb" / "wandb" / "offline-run-*" / "files" / "media" / "videos" / "sample_1_*.mp4"))


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_that_is_not_installed_is_one_line_before_any_model_loads(tracker, astronaut, pv_home, monkeypatch):
    import pvcli.jobs.tune as tune_job

    def no_model(*a, **k):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(tune_job, "build_backbone", no_model)
    monkeypatch.setitem(sys.modules, tracker, None)  # `import tensorboard` raises ImportError
    r = run("tune", astronaut, "--name", "x", "--report-to", tracker, *TINY)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert f"--report-to {tracker} needs the {tracker} package" in r.stderr and 'pip install "pv[tracking]"' in r.stderr
    assert r.stdout == "" and not (pv_home / "runs" / "x").exists()

    r = run("tune", astronaut, "--name", "x", "--report-to", "mlflow", *TINY)
    assert r.exit_code == 1 and "tune.report_to must be one of none, tensorboard, wandb" in r.stderr
