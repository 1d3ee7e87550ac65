"""`cnn-explain guided-backprop` and `cnn-explain saliency` on real photos: outputs follow the manifest contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def load(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("guided")
    result = run("guided-backprop", str(samples / "chelsea.png"), str(samples / "coffee.png"), "--target", "top2",
                 "--neuron", "_blocks.3:5", "--neuron", "_blocks.5:7:5:12", "--unit", "max",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    return load(out), out


def test_guided_outputs_follow_the_contract(guided_run) -> None:
    from PIL import Image

    manifest, out = guided_run
    assert manifest["command"] == "guided-backprop" and manifest["rule"] == "guided" and manifest["unit"] == "max"
    assert "warnings" not in manifest and manifest["errors"] == []
    assert len(manifest["items"]) == 2 * 4
    for item in manifest["items"]:
        for key in ("input", "input_sha256", "geometry", "prediction", "method", "target", "outputs", "rectifiers"):
            assert key in item, key
        assert item["method"] == "guided-backprop"
        assert item["rectifiers"] == {"nn.ReLU": 0, "nn.ReLU6": 33, "functional relu": 0, "functional relu6": 0}
        for key in ("gradient", "image", "magnitude", "figure"):
            assert (out / item["outputs"][key]).is_file(), key
        assert "signed" not in item["outputs"]
        gradient = np.load(out / item["outputs"]["gradient"])
        assert gradient.dtype == np.float32 and gradient.shape == (3, 224, 224) and np.any(gradient)
        assert Image.open(out / item["outputs"]["image"]).size == (224, 224)
        assert Image.open(out / item["outputs"]["magnitude"]).mode == "L"
    chelsea = [i for i in manifest["items"] if i["input"].endswith("chelsea.png")]
    top = [i["target"] for i in chelsea[:2]]
    assert [t["index"] for t in top] == [p["index"] for p in chelsea[0]["prediction"][:2]]
    assert [t["rank"] for t in top] == [1, 2] and top[0]["name"] == "tiger cat"
    assert len({json.dumps(i["outputs"]) for i in manifest["items"]}) == len(manifest["items"])  # no overwrites


def test_neuron_units_and_their_receptive_fields(guided_run, lite0) -> None:
    manifest, out = guided_run
    neurons = [i for i in manifest["items"] if "neuron" in i["target"]]
    assert len(neurons) == 4
    for item in neurons:
        t = item["target"]
        assert t["mode"] == "unit" and len(t["unit"]) == 2
        if t["layer"] == "_blocks.3":  # LAYER:C with --unit max: the highest unit, and the manifest says so
            assert t["unit_choice"] == "max" and t["requested"] == "_blocks.3:5"
            assert t["neuron"] == f"_blocks.3:5:{t['unit'][0]}:{t['unit'][1]}"
        else:
            assert t["unit_choice"] == "given" and t["unit"] == [5, 12] and "requested" not in t
        x0, y0, x1, y1 = (int(v) for v in t["receptive_field"]["box"])
        magnitude = np.abs(np.load(out / item["outputs"]["gradient"])).max(0)
        inside = np.zeros(magnitude.shape, dtype=bool)
        inside[y0:y1, x0:x1] = True
        assert np.all(magnitude[~inside] == 0) and np.count_nonzero(magnitude[inside]) > 0.5 * inside.sum()
    # the chosen unit really is the channel's maximum in that image
    from explain.hooks import LayerTap

    item = next(i for i in neurons if i["target"]["layer"] == "_blocks.3" and i["input"].endswith("chelsea.png"))
    from PIL import Image

    x = lite0.preprocess(Image.open(Path(__file__).parents[1] / item["input"]).convert("RGB"))[None]
    with LayerTap(lite0.model, ["_blocks.3"]) as tap, torch.no_grad():
        lite0.model(x)
    channel = tap.outputs["_blocks.3"][0, 5]
    y, x_ = item["target"]["unit"]
    assert float(channel[y, x_]) == pytest.approx(float(channel.max()))
    assert float(channel[y, x_]) == pytest.approx(item["target"]["score"], rel=1e-4)


def test_guided_gradcam(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "o"
    result = run("guided-backprop", str(samples / "coffee.png"), "--with-cam", "gradcam", "--format", "svg",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    manifest = load(out)
    assert manifest["with_cam"] == "gradcam" and manifest["layers"] == ["_head_act"]
    item = manifest["items"][0]
    assert item["method"] == "guided-gradcam" and item["layer"] == "_head_act" and item["target"]["index"] == 967
    product, guided, cam = (np.load(out / item["outputs"][k]) for k in ("gradient", "guided", "cam"))
    assert cam.shape == (224, 224) and cam.min() == 0.0 and cam.max() == pytest.approx(1.0)
    np.testing.assert_allclose(product, guided * cam[None], rtol=1e-6, atol=1e-12)
    assert (out / item["outputs"]["figure"]).read_text().lstrip().startswith("<?xml")


def test_model_without_rectifiers_warns(tmp_path: Path, samples: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    path = tmp_path / "tanh_net.pt"
    torch.save(model, path)
    out = tmp_path / "o"
    result = run("guided-backprop", str(samples / "coffee.png"), "--weights", str(path), "--trust-checkpoint",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    manifest = load(out)
    assert manifest["warnings"] and "no rectifier" in manifest["warnings"][0]
    assert "warning: no rectifier" in result.stderr
    item = manifest["items"][0]
    assert sum(item["rectifiers"].values()) == 0 and item["target"]["name"].startswith("class_")


def test_saliency_refuses_a_billion_samples_before_any_work(tmp_path: Path, samples: Path) -> None:
    result = run("saliency", str(samples / "coffee.png"), "--samples", "1000000000", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert result.stderr == ("error: --samples must be a whole number from 0 (plain gradient) to 10,000 (SmoothGrad's "
                             "paper uses 50), got 1000000000\n")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_saliency_smoothgrad(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "o"
    result = run("saliency", str(samples / "coffee.png"), "--target", "espresso", "--samples", "2", "--noise", "0.1",
                 "--times-input", "--signed", "--format", "pdf", "--out", str(out), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest == load(out)
    assert manifest["command"] == "saliency" and manifest["samples"] == 2 and manifest["times_input"] is True
    item = manifest["items"][0]
    assert item["method"] == "smoothgrad" and item["times_input"] and "rectifiers" not in item
    assert item["smoothgrad"]["samples"] == 2 and item["smoothgrad"]["noise"] == 0.1 and item["smoothgrad"]["sigma"] > 0
    assert item["outputs"]["gradient"].endswith("smoothgrad_x_input_967.npy")
    assert (out / item["outputs"]["signed"]).is_file()
    assert (out / item["outputs"]["figure"]).read_bytes().startswith(b"%PDF")
    assert np.load(out / item["outputs"]["gradient"]).shape == (3, 224, 224)


def test_saliency_noise_does_not_depend_on_batching(tmp_path: Path, samples: Path) -> None:
    grads = []
    for batch in ("1", "2"):
        out = tmp_path / batch
        result = run("saliency", str(samples / "coffee.png"), str(samples / "chelsea.png"), "--samples", "1",
                     "--batch-size", batch, "--seed", "3", "--out", str(out), "--quiet")
        assert result.exit_code == 0, result.output
        manifest = load(out)
        grads.append([np.load(out / i["outputs"]["gradient"]) for i in manifest["items"]])
        seeds = [i["smoothgrad"]["seed"] for i in manifest["items"]]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    assert seeds[0] != seeds[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--neuron", "_blocks.99:1"], "unknown layer '_blocks.99' (did you mean"),
        (["--neuron", "_blocks.3:9999"], "channel 9999 is out of range"),
        (["--neuron", "_blocks.3:1:99:0"], "outside layer '_blocks.3'"),
        (["--neuron", "blocks3"], "bad neuron 'blocks3'"),
        (["--with-cam", "gradcam", "--layer", "_blocks.99"], "unknown layer '_blocks.99'"),
        (["--with-cam", "gradcam", "--layer", "_fc"], "spatial"),
        (["--with-cam", "gradcam+++"], "unknown CAM method"),
        (["--layer", "_head_act"], "--with-cam"),
        (["--unit", "median"], "unknown --unit"),
        (["--rule", "backprop"], "unknown --rule"),
        (["--target", "zebraa"], "unknown class name 'zebraa'"),
        (["--colormap", "RdBuu"], "unknown colour map"),
    ],
)
def test_bad_options_one_line_exit_2(samples: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = run("guided-backprop", str(samples / "coffee.png"), *args, "--out", str(tmp_path / "o"), "--quiet")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_saliency_bad_neuron_exit_2(samples: Path, tmp_path: Path) -> None:
    result = run("saliency", str(samples / "coffee.png"), "--neuron", "_blocks.3:5:0", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "bad neuron" in result.stderr and len(result.stderr.strip().splitlines()) == 1
