"""`python -m vaejax.explore`: the API against the model functions, the page in a real headless browser,
the error paths and the flags."""

import json
import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

from vaejax import explore
from vaejax.checkpoint import PARAMS_FILE, load_finished_run
from vaejax.config import Config
from vaejax.errors import VaejaxError
from vaejax.figures import project_2d
from vaejax.inference import METRIC_PRECISION, to_uint8
from vaejax.models import build_model, decode, encode, images_to_float, init_params
from vaejax.training import train

CHROMIUM = Path("/usr/bin/chromium")


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_mnist):
    """conv_vae at latent 2, one epoch on 512 images."""
    folder = tmp_path_factory.mktemp("explore") / "run"
    train(Config(epochs=1, batch_size=64, workdir=str(folder)).resolved(), small_mnist, log=quiet)
    return folder


@pytest.fixture(scope="module")
def explorer(run, small_mnist):
    config, model, params, history = load_finished_run(run)
    return explore.Explorer(config, model, params, history, small_mnist.test_images, small_mnist.test_labels,
                            small_mnist.class_names)


@pytest.fixture(scope="module")
def server(explorer):
    server = explore.ExplorerServer("127.0.0.1", 0, explorer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def call(server, path: str, body=None) -> tuple[int, dict]:
    """(status, JSON answer) of a GET (no body) or a POST (a JSON-able body, or raw bytes)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path.lstrip("/"), data=data, method="GET" if data is None else "POST",
                                     headers={} if data is None else {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def model_pixels(explorer, z, labels=None) -> np.ndarray:
    """The decoder called directly, as the figures call it: grey levels (n, 784)."""
    z = np.asarray(z, np.float32).reshape(-1, explorer.latent_dim)
    with jax.default_matmul_precision(METRIC_PRECISION):
        logits = decode(explorer.model, explorer.params, z, labels)
    return to_uint8(np.asarray(jax.nn.sigmoid(logits))).reshape(len(z), -1)


def assert_same_image(answer, expected):
    """Equal grey levels; one level of slack for a float32 result that rounds the other way."""
    difference = np.abs(np.asarray(answer, np.int32) - np.asarray(expected, np.int32))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99


def test_decode_and_encode_answer_as_the_model_functions(server, explorer, small_mnist):
    for z in ([0.0, 0.0], [1.25, -2.5]):
        status, answer = call(server, "/api/decode", {"z": z})
        assert status == 200
        assert_same_image(answer["pixels"], model_pixels(explorer, z)[0])
    points = [[0.5, 0.5], [-1.0, 2.0], [3.0, -3.0]]
    status, answer = call(server, "/api/decode", {"z": points})
    assert status == 200 and len(answer["pixels"]) == 3
    assert_same_image(answer["pixels"], model_pixels(explorer, points))

    image = small_mnist.test_images[:1]
    status, answer = call(server, "/api/encode", {"pixels": image.reshape(-1).tolist()})
    assert status == 200
    with jax.default_matmul_precision(METRIC_PRECISION):
        mean, std = encode(explorer.model, explorer.params, images_to_float(image))
    np.testing.assert_allclose(answer["mean"], mean[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answer["std"], std[0], rtol=1e-5, atol=1e-6)
    assert_same_image(answer["pixels"], model_pixels(explorer, mean)[0])
    np.testing.assert_allclose(explorer.test_means[0], mean[0], rtol=1e-5, atol=1e-6)


def test_strips_samples_and_planes(server, explorer):
    status, answer = call(server, "/api/interpolate", {"start": {"index": 0}, "end": {"z": [2.0, 2.0]}})
    assert status == 200 and len(answer["pixels"]) == explore.INTERPOLATION_STEPS
    path = np.linspace(explorer.test_means[0], [2.0, 2.0], explore.INTERPOLATION_STEPS)
    assert_same_image(answer["pixels"], model_pixels(explorer, path))

    status, answer = call(server, "/api/samples", {"seed": 7})
    assert status == 200
    np.testing.assert_array_equal(answer["z"], jax.random.normal(jax.random.key(7), (explore.SAMPLE_COUNT, 2)))
    assert_same_image(answer["pixels"], model_pixels(explorer, answer["z"]))

    status, plane = call(server, "/api/plane")
    assert status == 200 and plane["directions"] == [[1.0, 0.0], [0.0, 1.0]]
    np.testing.assert_allclose(plane["coords"], explorer.test_means, atol=1e-4)
    assert call(server, "/api/plane?axes=pca")[0] == 200


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server):
    bad = [
        ("/api/decode", b"{not json", 400),
        ("/api/decode", {"z": [1.0]}, 400),
        ("/api/decode", {"z": [1.0, 2.0, 3.0]}, 400),
        ("/api/decode", b'{"z": [NaN, 0]}', 400),
        ("/api/decode", {"z": [1e39, 0]}, 400),
        ("/api/decode", {"z": [[0, 0]] * 197}, 400),
        ("/api/encode", {"pixels": [0] * 783}, 400),
        ("/api/encode", {"pixels": [256] * 784}, 400),
        ("/api/interpolate", {"start": {"index": 10**6}, "end": {"index": 0}}, 400),
        ("/api/samples", {"seed": "seven"}, 400),
        ("/api/nowhere", {"z": [0, 0]}, 404),
        ("/api/plane?axes=0,0", None, 400),
        ("/api/decode", None, 405),
    ]
    for path, body, expected in bad:
        status, answer = call(server, path, body)
        assert status == expected and answer["error"], (path, body, answer)
    assert call(server, "/api/decode", {"z": [0, 0]})[0] == 200


def untrained_explorer(dataset, **changes) -> explore.Explorer:
    """An explorer of freshly initialised params: enough to check what depends on the model's kind."""
    config = Config(**changes).resolved()
    model = build_model(config.model, config.latent_dim, config.inputs_decoder)
    history = [{"epoch": 0, "test": {"loss": 0.0}}]
    return explore.Explorer(config, model, init_params(model, jax.random.key(0)), history, dataset.test_images,
                            dataset.test_labels, dataset.class_names)


def test_a_conditional_model_decodes_the_chosen_class(small_mnist):
    cvae = untrained_explorer(small_mnist, model="conv_cvae")
    assert cvae.info({})["conditional"]
    with pytest.raises(explore.BadRequest, match="label"):
        cvae.decode({"z": [0.5, 0.5]})
    for label in (3, 8):
        answer = cvae.decode({"z": [0.5, 0.5], "label": label})
        assert_same_image(answer["pixels"], model_pixels(cvae, [0.5, 0.5], np.array([label]))[0])
    # Between two test digits the class blends with z, as vaejax.generate's strips do.
    strip = cvae.interpolate({"start": {"index": 0}, "end": {"index": 1}})
    start, end = cvae.test_means[0], cvae.test_means[1]
    one_hot = np.eye(10)[small_mnist.test_labels[:2]]
    weights = np.linspace(0, 1, explore.INTERPOLATION_STEPS)[:, None]
    expected = model_pixels(cvae, (1 - weights) * start + weights * end,
                            (1 - weights) * one_hot[0] + weights * one_hot[1])
    assert_same_image(strip["pixels"], expected)


def test_a_plain_autoencoder_has_a_code_plane_and_no_prior(small_mnist):
    ae = untrained_explorer(small_mnist, model="dense_ae", latent_dim=3)
    info = ae.info({})
    assert not info["variational"] and info["default_axes"] == "pca" and len(info["slider_ranges"]) == 3
    plane = ae.plane({"axes": "pca"})
    np.testing.assert_allclose(plane["coords"], project_2d(ae.test_means)[0], atol=1e-4)
    assert "normal" not in plane["grids"]
    with pytest.raises(explore.BadRequest, match="no prior"):
        ae.samples({"seed": 0})


@pytest.mark.parametrize("changes, message", [
    ({"port": -1}, r"--port must be from 0 to 65535 \(0: any free port\), got -1"),
    ({"port": 65536}, "--port must be from 0 to 65535"),
    ({"host": " "}, "--host must not be empty"),
    ({"workdir": Path("no/such/run")}, "--workdir no/such/run does not exist"),
    ({"workdir": Path(__file__)}, "is a file, not a folder"),
])
def test_options_are_validated_in_one_place(changes, message):
    options = explore.ExploreOptions(**{"workdir": Path(__file__).parent} | changes)
    with pytest.raises(VaejaxError, match=message):
        options.validate()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_workdir_is_named(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0)
    with pytest.raises(VaejaxError, match="is not readable"):
        explore.ExploreOptions(folder).validate()


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m vaejax.explore: error: "), lines
    return lines[0]


def test_a_folder_without_a_finished_run_is_one_line(tmp_path, capsys):
    assert explore.main(["--workdir", str(tmp_path), "--port", "0"]) == 2
    assert "config.json" in one_error_line(capsys)


def test_a_damaged_params_file_is_one_line(run, tmp_path, capsys):
    damaged = shutil.copytree(run, tmp_path / "run")
    (damaged / PARAMS_FILE).write_bytes(b"\xc1 not msgpack")
    assert explore.main(["--workdir", str(damaged), "--port", "0"]) == 2
    assert "corrupt" in one_error_line(capsys)


def test_a_port_in_use_is_one_line(run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert explore.main(["--workdir", str(run), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen" in one_error_line(capsys)


def test_bad_flags_are_one_line(capsys):
    assert explore.main(["--workdir", ".", "--port", "eighty"]) == 2
    one_error_line(capsys)
    assert explore.main(["--workdir", ".", "--port", "99999"]) == 2
    assert "--port" in one_error_line(capsys)


def test_ctrl_c_stops_cleanly(explorer, monkeypatch, capsys):
    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    monkeypatch.setattr(explore, "load_explorer", lambda workdir: explorer)
    monkeypatch.setattr(explore.ExplorerServer, "serve_forever", interrupted)
    assert explore.main(["--workdir", ".", "--port", "0"]) == 0
    output = capsys.readouterr()
    assert output.out.startswith("exploring . at http://127.0.0.1:")
    assert output.err == "python -m vaejax.explore: stopped\n"


# --- the page in a real browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_page(server):
    """The page loaded in headless chromium, with every URL it requested and every script error."""
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright package (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requested, errors = [], []
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url)
        page.wait_for_function("window.explorer.ready", timeout=20_000)
        yield page, requested, errors
        browser.close()


def painted(page, canvas_id: str) -> np.ndarray:
    """A 28x28 canvas's grey levels (its red channel), as painted."""
    rgba = page.evaluate("id => Array.from(document.getElementById(id).getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data)", canvas_id)
    return np.asarray(rgba, np.int32).reshape(-1, 4)[:, 0]


def test_the_pointer_paints_the_decoder_at_the_z_under_it(browser_page, explorer):
    page, _, errors = browser_page
    box = page.locator("#marks-layer").bounding_box()
    view = page.evaluate("window.explorer.view")
    x0, x1, y0, y1 = view["extent"]
    half_pixel = 0.5 * (x1 - x0) / view["size"]
    shown = []
    for px, py in ((120, 300), (370, 90)):
        page.mouse.move(box["x"] + px, box["y"] + py)
        # The page's mapping, as it documents it: x grows rightwards, y upwards, over the extent.
        under = [x0 + px / view["size"] * (x1 - x0), y1 - py / view["size"] * (y1 - y0)]
        page.wait_for_function("([z, slack]) => window.explorer.shownZ !== null && "
                               "window.explorer.shownZ.every((v, k) => Math.abs(v - z[k]) <= slack)",
                               arg=[under, half_pixel])
        z = page.evaluate("window.explorer.shownZ")
        shown.append(painted(page, "decoded"))
        assert_same_image(shown[-1], model_pixels(explorer, z)[0])
    assert np.abs(shown[0] - shown[1]).max() > 10
    assert page.evaluate("window.explorer.latencies.length") >= 2
    assert not errors


def test_a_drawn_stroke_shows_its_code_and_reconstruction(browser_page, explorer):
    page, _, errors = browser_page
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + 150, pad["y"] + 40)
    page.mouse.down()
    for step in range(12):
        page.mouse.move(pad["x"] + 150 - 4 * step, pad["y"] + 40 + 17 * step)
    page.mouse.up()
    page.wait_for_function("window.explorer.code !== null")
    drawn = painted(page, "drawn")
    assert drawn.max() > 200
    expected = explorer.encode({"pixels": drawn.tolist()})
    page.wait_for_function("mean => window.explorer.code.mean.every((v, k) => Math.abs(v - mean[k]) < 1e-5)",
                           arg=expected["mean"])
    assert_same_image(painted(page, "reconstruction"), expected["pixels"])
    red_pixels = page.evaluate("""() => {
        const canvas = document.getElementById('marks-layer');
        const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 0; i < rgba.length; i += 4) count += rgba[i] > 180 && rgba[i + 1] < 60 && rgba[i + 3] > 0;
        return count;
    }""")
    assert red_pixels > 20  # the code's cross and ellipse on the plane
    assert not errors


def test_strip_and_samples_and_nothing_from_outside(browser_page, server, explorer):
    page, requested, errors = browser_page
    page.click("#use-digits")
    page.click("#sample")
    page.wait_for_function("document.querySelectorAll('#strip canvas').length === 10 && "
                           "document.querySelectorAll('#samples canvas').length === 16")
    assert explorer.to_pixels._cache_size() == len(explore.DECODE_BATCHES)  # warm-up compiled every shape
    assert explorer.to_code._cache_size() == 1
    assert requested and all(url.startswith(server.url) or url.startswith("data:") for url in requested), requested
    assert not errors
