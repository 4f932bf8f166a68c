"""Scale: data-parallel tuning on several processes (gloo on CPU), gradient accumulation on one,
and resuming a run on another process count."""

import json
import os
import subprocess
import sys

import pytest
from conftest import NO_HELD_OUT, press_ctrl_c_at, run, use_home, write_manifest

from pvcli.engine.tune import Tuner


def pv(*args, home, timeout=300, env=None):
    env = {**os.environ, "PV_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pvcli", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_clips_per_step_accumulates_several_clips_into_one_update(encoder, reference, tiny_settings):
    from pv_animatediff.backbone import make_tiny

    from pvcli.engine.adapter import adapter_state_dict
    from pvcli.settings import from_dict

    updates = {}
    for clips in (1, 2):
        s = from_dict(tiny_settings.to_dict(), [{"tune": {"clips_per_step": clips, "grad_clip": 0}}])
        tuner = Tuner(make_tiny(), encoder, s, reference)
        before = adapter_state_dict(tuner.bb.unet)
        stats = tuner.step()
        assert stats.frames == clips * s.tune.supervised_frames and len(stats.prompt.split(" | ")) == clips
        after = adapter_state_dict(tuner.bb.unet)
        updates[clips] = sum(float((after[k] - before[k]).abs().sum()) for k in before)
        assert updates[clips] > 0
    assert updates[1] != updates[2]  # the second clip changed the gradient


def _manifest(tmp_path, photo_dir, names=("alice", "bob", "carol")):
    photos = {"alice": "astronaut.png", "bob": "blank.png", "carol": "astronaut_small.jpg"}
    return write_manifest(tmp_path, {n: photo_dir / photos[n] for n in names})


def test_manifest_tunes_each_identity_reports_failures_and_skips_finished_ones(photo_dir, pv_home, tmp_path, monkeypatch):
    manifest = _manifest(tmp_path, photo_dir)
    # carol was interrupted earlier: the manifest resumes her run
    release = press_ctrl_c_at(monkeypatch, 1)
    assert run("tune", photo_dir / "astronaut_small.jpg", "--name", "carol", "--profile", "tiny", *NO_HELD_OUT, "--steps", "2",
               "--quiet").exit_code == 130
    release()

    r = run("tune", "--manifest", manifest, "--json")
    assert r.exit_code == 1 and "1 identity of the manifest failed" in r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["name"], x["status"]) for x in records] == [("alice", "tuned"), ("bob", "failed"), ("carol", "resumed")]
    assert "no face" in records[1]["error"].lower()
    assert json.loads((pv_home / "identities" / "carol" / "identity.json").read_text())["steps"] == 2  # its own run
    r = run("tune", "--manifest", manifest, "--json")  # again: finished ones are skipped
    assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["skipped", "failed", "skipped"]


def test_manifest_shards_split_the_entries_and_bad_manifests_get_one_line(photo_dir, pv_home, tmp_path):
    manifest = _manifest(tmp_path, photo_dir, names=("alice", "bob", "carol"))
    r = run("tune", "--manifest", manifest, "--shard", "2/2")
    assert r.exit_code == 1 and r.stdout == ""  # shard 2 of 2 holds bob alone, who has no face
    r = run("tune", "--manifest", manifest, "--shard", "1/2", "--steps", "1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["alice", "carol"]
    for bad, message in [("identities: []\n", "non-empty `identities:`"), ("identities:\n  - name: x\n", "needs a name and photos"),
                         ("identities:\n  - {name: x, photos: a.png, colour: red}\n", "unknown key(s) colour"),
                         ("identities: [\n", "not valid YAML")]:
        (tmp_path / "bad.yaml").write_text(bad)
        r = run("tune", "--manifest", tmp_path / "bad.yaml")
        assert r.exit_code == 1 and message in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
    r = run("tune", "--manifest", manifest, "--shard", "3/2")
    assert r.exit_code == 1 and "--shard must be i/n" in r.stderr


def test_replica_drift_is_the_largest_difference_between_any_weight_of_two_replicas(monkeypatch):
    """`replica_drift` in the log: replicas apart by +d on one weight and -d on another (equal sums)
    drift by d; identical replicas by 0. Two replicas run as threads over a stand-in all-reduce."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from pvcli.distributed import DataParallel

    world, posted, barrier, here = 2, [None, None], threading.Barrier(2), threading.local()

    class Gather:  # accelerate's gather over two replicas running as threads
        def gather(self, tensor):
            posted[here.rank] = tensor.clone()
            barrier.wait()
            every = torch.cat(posted)
            barrier.wait()
            return every
    base = [torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(5)]
    moved = [p.clone() for p in base]
    moved[0][1, 2] += 0.25
    moved[1][3] -= 0.25

    def drift(rank, params):
        here.rank = rank
        return DataParallel(Gather()).drift(params)

    for other, expected in ((base, 0.0), (moved, 0.25)):
        with ThreadPoolExecutor(world) as pool:
            drifts = [f.result(timeout=60) for f in [pool.submit(drift, 0, base), pool.submit(drift, 1, other)]]
        assert drifts == [pytest.approx(expected, abs=1e-6)] * world


SHARDED = '''
import json, os, torch
from pv_animatediff.backbone import make_tiny
from pv_facenet.encoder import make_facenet
from pvcli.distributed import process_group
from pvcli.engine.adapter import ADAPTER_NAME, adapter_state_dict, load_adapter_state_dict
from pvcli.engine.tune import Tuner
from pvcli.settings import from_dict, resolve

dp, encoder = process_group(), make_facenet()
reference = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
settings = from_dict(resolve("tiny")[1].to_dict(), [{"tune": {"held_out": 0, "clips_per_step": 2}}])
after, kept = {}, {}
for shard in (False, True):
    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, settings, reference, rank=dp.rank)
    if shard:  # the unsharded run's starting adapter
        load_adapter_state_dict(tuner.bb.denoiser, start)
    else:
        start = adapter_state_dict(tuner.bb.denoiser)
    dp.attach(tuner, shard=shard)
    stats = tuner.step()
    after[shard] = adapter_state_dict(tuner.bb.denoiser)
    frozen = [p for n, p in tuner.bb.denoiser.named_parameters() if ADAPTER_NAME not in n]
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in frozen)
    kept[shard] = local / sum(p.numel() for p in frozen)
gap = max(float((after[True][k] - after[False][k]).abs().max()) for k in after[False])
moved = max(float((after[False][k] - start[k]).abs().max()) for k in start)
drift = dp.drift(tuner.params)
if dp.is_main:
    with open(os.environ["PV_TEST_SHARDED_OUT"], "w") as f:
        json.dump({"gap": gap, "moved": moved, "kept": kept, "drift": drift}, f)
'''


# Both ends of data parallel ride on one launch of two processes (each launch costs ~11 s of
# torchrun, imports and model building on 2 cores): every process of `pv tune --resume alice
# --processes 2` first runs SHARDED (from a sitecustomize.py, which Python runs at start-up; only
# the processes torchrun started have a RANK), then pv's own `tune --resume`.
SITE = """import os
if os.environ.get("RANK") is not None and os.environ.get("PV_TEST_SHARDED_OUT"):
    import runpy
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharded.py"))
"""


def test_two_processes_resume_an_interrupted_run_in_lockstep_and_shard_the_frozen_denoiser(astronaut, tmp_path,
                                                                                            monkeypatch):
    """One launch of two processes covers data parallel from both ends: a run interrupted on one
    process resumes on two, which step in lockstep and write one identity that generates.
    tune.fsdp: FSDP2 (gloo on CPU) splits the frozen denoiser between the processes and DDP keeps
    the adapter whole on each; a step (two clips per process, accumulated) moves the adapter exactly
    as the unsharded processes do."""
    pv_home, site = tmp_path / "dp-home", tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    (site / "sharded.py").write_text(SHARDED)
    use_home(monkeypatch, pv_home)
    release = press_ctrl_c_at(monkeypatch, 1)
    r = run("tune", astronaut, "--name", "alice", "--profile", "tiny", *NO_HELD_OUT, "--steps", "3", "--quiet",
            "--set", "tune.checkpoint_every=1", "--report-to", "tensorboard")
    assert r.exit_code == 130
    release()
    result = tmp_path / "sharded.json"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
           "PV_TEST_SHARDED_OUT": str(result), "OMP_NUM_THREADS": "1"}
    r = pv("tune", "--resume", "alice", "--processes", "2", "--quiet", home=pv_home, env=env)  # keeps its tracker
    assert r.returncode == 0, r.stderr[-3000:]

    # sharding (SHARDED, run by each process before pv's resume)
    assert result.is_file(), r.stderr[-3000:]
    out = json.loads(result.read_text())
    assert out["kept"]["false"] == 1.0 and out["kept"]["true"] < 0.6, out  # each process holds about half
    assert out["moved"] > 0 and out["gap"] < 1e-6, out
    assert out["drift"] == 0.0

    # the resumed run
    assert r.stdout.splitlines() == ["alice"]  # one result line, from the main process only
    log = [json.loads(line) for line in (pv_home / "identities" / "alice" / "log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2, 3]  # the loss curve is logged once
    assert [rec.get("processes") for rec in log] == [None, 2, 2]
    assert all(rec["replica_drift"] == 0.0 for rec in log[1:])  # identical adapters every step
    assert all(rec["loss"] is not None for rec in log)
    info = json.loads((pv_home / "identities" / "alice" / "identity.json").read_text())
    assert info["steps"] == 3 and info["resumed_at"] == 1
    # only the main process logs to the tracker: one event file per run of pv, each step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = (pv_home / "logs" / "tensorboard" / "alice").iterdir()
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # the interrupted run's and the main process's
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert not (pv_home / "runs" / "alice").exists()
    out = tmp_path / "a.gif"
    g = run("generate", "alice", "surfing", "-o", out)
    assert g.exit_code == 0, g.stderr
    assert out.is_file()


def test_sharding_with_a_trajectory_pool_is_refused_in_one_line(tiny_settings):
    import pytest

    from pvcli.errors import PVError
    from pvcli.settings import from_dict

    with pytest.raises(PVError, match="tune.fsdp cannot be combined with tune.trajectory_pool"):
        from_dict(tiny_settings.to_dict(), [{"tune": {"fsdp": True, "trajectory_pool": 4}}])
