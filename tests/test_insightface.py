"""The insightface encoder's real loading, detection parsing and torch conversion, driven by
small ONNX models with the real packs' input/output signatures (no pack ships in any package)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pvcli.errors import PVError

RNG = np.random.default_rng(0)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def recognition_model(path):
    """ArcFace-like: data [N,3,112,112] -> conv/BN/PReLU/residual/pool -> Gemm -> fc1 [N,512]."""
    inits = [
        _init("w1", RNG.normal(0, 0.2, (8, 3, 3, 3))), _init("b1", np.zeros(8)),
        _init("g", np.ones(8)), _init("beta", RNG.normal(0, 0.1, 8)), _init("mean", RNG.normal(0, 0.1, 8)),
        _init("var", np.ones(8) * 1.5), _init("slope", np.full((8, 1, 1), 0.25)),
        _init("w2", RNG.normal(0, 0.2, (8, 8, 3, 3))),
        _init("fc_w", RNG.normal(0, 0.05, (512, 392))), _init("fc_b", np.zeros(512)),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-5),
        helper.make_node("PRelu", ["bn", "slope"], ["pr"]),
        helper.make_node("Conv", ["pr", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["pr", "c2"], ["res"]),
        helper.make_node("AveragePool", ["res"], ["pool"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc1"], transB=1),
    ]
    graph = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def detection_model(path):
    """SCRFD-like, 9 outputs (scores, boxes, 5 keypoints at strides 8/16/32, 2 anchors): only the
    stride-16 head fires, on bright regions, with fixed box and keypoint offsets."""
    nodes, outs = [], {}
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("shape1", [-1, 1]), ("shape4", [-1, 4]), ("shape10", [-1, 10]))]
    kps = np.array([[-0.5, -0.5], [0.5, -0.5], [0, 0], [-0.4, 0.6], [0.4, 0.6]]).ravel()
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]))
        heads = {"score": (np.full((2, 3, 1, 1), 2.0 if s == 16 else 0.0), np.full(2, -1.0 if s == 16 else -10.0), 1),
                 "bbox": (np.zeros((8, 3, 1, 1)), np.full(8, 2.0), 4),
                 "kps": (np.zeros((20, 3, 1, 1)), np.tile(kps, 2), 10)}
        for head, (w, b, last) in heads.items():
            inits += [_init(f"{head}{s}_w", w), _init(f"{head}{s}_b", b)]
            nodes.append(helper.make_node("Conv", [f"p{s}", f"{head}{s}_w", f"{head}{s}_b"], [f"{head}{s}_c"],
                                          kernel_shape=[1, 1]))
            src = f"{head}{s}_c"
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [src], [f"{head}{s}_sig"]))
                src = f"{head}{s}_sig"
            nodes.append(helper.make_node("Transpose", [src], [f"{head}{s}_t"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [f"{head}{s}_t", f"shape{last}"], [f"{head}_{s}"]))
            outs[f"{head}_{s}"] = last
    order = [f"{h}_{s}" for h in ("score", "bbox", "kps") for s in (8, 16, 32)]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["A", outs[n]]) for n in order], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface_models")
    (root / "antelopev2").mkdir()
    detection_model(str(root / "antelopev2" / "scrfd_10g_bnkps.onnx"))
    recognition_model(str(root / "antelopev2" / "glintr100.onnx"))
    return root


@pytest.fixture(scope="module")
def encoder(pack_root):
    from pv_insightface.encoder import make_insightface

    return make_insightface("antelopev2", options={"model_root": str(pack_root)})


def test_pack_is_found_and_classified(encoder, pack_root):
    assert encoder.det_path.name == "scrfd_10g_bnkps.onnx" and encoder.rec_path.name == "glintr100.onnx"
    assert encoder.dim == 512 and encoder.input_size == 112
    assert encoder.describe()["encoder_weights"] == "insightface antelopev2/glintr100.onnx"


def test_torch_conversion_matches_onnxruntime_and_passes_gradients(encoder):
    faces = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        ort = encoder.embed(faces)  # onnxruntime path
    live = faces.clone().requires_grad_(True)
    converted = encoder.embed(live)  # torch path
    assert ort.shape == converted.shape == (3, 512)
    assert (ort - converted.detach()).abs().max() < 1e-4
    (1 - converted[0] @ ort[1]).backward()
    assert live.grad is not None and live.grad.abs().sum() > 0


def test_scrfd_detection_is_parsed_into_faces(encoder):
    img = np.zeros((640, 640, 3), np.uint8)
    img[192:288, 320:416] = 255  # a bright 96x96 "face"
    faces = encoder.detect(img)
    assert len(faces) >= 1
    f = faces[0]
    cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
    assert 320 <= cx <= 416 and 192 <= cy <= 288 and f.score > 0.9
    assert f.landmarks.shape == (5, 2) and f.landmarks[0, 0] < f.landmarks[1, 0]  # left eye left of right eye
    m = encoder.align_matrix(f)
    assert m.shape == (2, 3)
    assert encoder.detect(np.zeros((320, 320, 3), np.uint8)) == []


def test_missing_pack_says_where_to_put_it(tmp_path):
    from pv_insightface.encoder import make_insightface

    with pytest.raises(PVError, match="model pack 'buffalo_l' not found") as exc:
        make_insightface("buffalo_l", options={"model_root": str(tmp_path)})
    assert str(tmp_path) in exc.value.hint and "does not download" in exc.value.hint


def test_unsupported_ops_are_named(tmp_path):
    from pv_insightface.onnx_torch import OnnxModule

    node = helper.make_node("Erf", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    with pytest.raises(PVError, match="unsupported ONNX ops .*Erf"):
        OnnxModule(str(tmp_path / "m.onnx"))


def test_eval_can_judge_with_an_insightface_pack(pack_root, tmp_path, monkeypatch, astronaut):
    """The registry path users take: `pv eval --encoder antelopev2` with the pack in ~/.insightface."""
    import json

    import cv2
    from typer.testing import CliRunner

    from pvcli.cli import create_app
    from pvcli.video import write_mp4

    home = tmp_path / "home"
    (home / ".insightface").mkdir(parents=True)
    (home / ".insightface" / "models").symlink_to(pack_root)
    monkeypatch.setenv("HOME", str(home))
    ref = tmp_path / "ref.png"
    img = np.zeros((640, 640, 3), np.uint8)
    img[192:288, 320:416] = 255
    cv2.imwrite(str(ref), img)
    write_mp4(np.stack([img] * 4), tmp_path / "v.mp4", 4)
    r = CliRunner().invoke(create_app(), ["eval", str(tmp_path / "v.mp4"), "--ref", str(ref), "--encoder",
                                          "antelopev2", "--flow", "farneback", "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["videos"][0]
    assert row["face_detect_rate"]["antelopev2"] == 1.0 and row["face_sim_antelopev2"] > 0.9
