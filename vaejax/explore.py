"""`python -m vaejax.explore --workdir DIR`: a local web page to explore a trained run's latent space.

The server encodes and decodes in JAX through the run's own model functions, compiled once per
fixed batch size (requests are padded to one) and warmed up before the address is printed, so
moving the pointer never compiles. The page and its script come from `vaejax/explorer/`; nothing
is loaded from anywhere else. The JSON API:

    GET  /api/info                         the run, class names, the test set's labels, sizes
    GET  /api/plane?axes=pca | axes=I,J    a plane through latent space: its center and two directions,
                                           the test set's latent means on it, the figures' grid values
    POST /api/decode      {z, label}       one point (d numbers) or up to 196 -> 784 grey levels each
    POST /api/encode      {pixels, label}  784 grey levels -> mean, std (VAEs), reconstruction from the mean
    POST /api/interpolate {start, end, label}  each end {"z": [...]} or {"index": i} (a test digit)
    POST /api/samples     {seed, label}    images from the prior (VAEs)

`label` (0-9) is needed by a class-conditional model only. Grey levels are integers 0-255, row-major.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jax
import numpy as np

from vaejax import validation
from vaejax.command import Command, OneLineParser
from vaejax.config import Config
from vaejax.data import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES
from vaejax.errors import VaejaxError
from vaejax.figures import cell_extent, linear_grid_values, normal_grid_values, principal_plane
from vaejax.generate import INTERPOLATION_STEPS, to_uint8
from vaejax.models import AutoEncoder, decode, encode, images_to_float
from vaejax.steps import encode_in_batches, full_precision, make_mean_encoder

PROG = "python -m vaejax.explore"
GRID_POINTS = 14 * 14  # the figures' grids
SAMPLE_COUNT = 16
# The pointer's point; anything else (a grid, a strip, the samples: a click, not a pointer move) is padded
# to a grid, so the page needs two decoder programs, not one per size.
DECODE_BATCHES = (1, GRID_POINTS)
MAX_BODY_BYTES = 1 << 20
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
    "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
}


@dataclass(frozen=True)
class ExploreOptions:
    """What the command was asked for; `validate` checks it all before anything is loaded."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 8000

    def validate(self) -> None:
        validation.whole_number("--port", self.port, 0, validation.PORT_MAX, "0: any free port")
        validation.non_empty("--host", self.host)
        validation.existing_folder("--workdir", self.workdir)


class BadRequest(ValueError):
    """A request the API cannot answer: the client gets the message and a 4xx status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def numbers(value, length: int, name: str, low: float = -np.inf, high: float = np.inf) -> np.ndarray:
    """`value` as `length` finite float32 numbers in [low, high], or BadRequest."""
    if (not isinstance(value, list) or len(value) != length
            or not all(isinstance(item, int | float) and not isinstance(item, bool) for item in value)):
        raise BadRequest(f"{name} must be a list of {length} numbers")
    array = np.asarray(value, np.float64)
    if not (np.abs(array) <= np.finfo(np.float32).max).all():  # NaN fails too
        raise BadRequest(f"{name} must be finite (float32) numbers")
    if not ((array >= low).all() and (array <= high).all()):
        raise BadRequest(f"{name} must lie from {low:g} to {high:g}")
    return array.astype(np.float32)


def whole_number(value, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return value


def padded(rows: np.ndarray, size: int) -> np.ndarray:
    """`rows` with its last row repeated up to `size` rows (a fixed shape compiles once)."""
    return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


class Explorer:
    """A finished run ready to answer the page: its compiled encoder and decoder, the test set's
    latent means. Model calls hold a lock: the page's requests arrive on many threads."""

    def __init__(self, config: Config, model: AutoEncoder, params, history: list[dict], test_images: np.ndarray,
                 test_labels: np.ndarray, class_names):
        self.config, self.model, self.params = config, model, params
        self.latent_dim, self.history = config.latent_dim, history
        self.test_labels, self.class_names = test_labels, list(class_names)
        self.lock = threading.Lock()
        # Reported pixels and codes at full float32 precision, as the figures and evaluation compute them.
        self.to_pixels = jax.jit(full_precision(
            lambda params, z, class_weights: jax.nn.sigmoid(decode(model, params, z, class_weights))))
        self.to_code = jax.jit(full_precision(self.code_and_reconstruction))
        self.test_means = encode_in_batches(make_mean_encoder(model), params, test_images, test_labels)
        self.warm_up()

    def code_and_reconstruction(self, params, images, labels):
        mean, std = encode(self.model, params, images_to_float(images), labels)
        return mean, std, jax.nn.sigmoid(decode(self.model, params, mean, labels))

    def warm_up(self) -> None:
        """Compile every program the page can ask for, so no request waits for a compilation."""
        for size in DECODE_BATCHES:
            self.pixels(np.zeros((size, self.latent_dim), np.float32), self.class_weights(0, size))
        self.encode({"pixels": [0] * IMAGE_PIXELS, "label": 0})
        if self.model.variational:
            self.samples({"seed": 0, "label": 0})

    def class_weights(self, label: int, count: int) -> np.ndarray:
        """One-hot class weights (count, classes); an unconditional model ignores them."""
        return np.tile(np.eye(NUM_CLASSES, dtype=np.float32)[label], (count, 1))

    def requested_label(self, request: dict) -> int:
        if not self.model.conditional:
            return 0
        if "label" not in request:
            raise BadRequest(f"label (0 to {NUM_CLASSES - 1}) is required by a class-conditional model")
        return whole_number(request["label"], "label", 0, NUM_CLASSES - 1)

    def pixels(self, z: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
        """Decoded grey levels uint8 (n, 784) of z (n, d), in the smallest fixed batch that holds them."""
        count = len(z)
        size = next(size for size in DECODE_BATCHES if size >= count)
        with self.lock:
            probabilities = self.to_pixels(self.params, padded(z, size), padded(class_weights, size))
            return to_uint8(np.asarray(probabilities)[:count]).reshape(count, IMAGE_PIXELS)

    def info(self, query: dict) -> dict:
        last = self.history[-1]
        return {
            "workdir": self.config.workdir, "model": self.config.model, "dataset": self.config.dataset,
            "binarize": self.config.binarize, "latent_dim": self.latent_dim, "epochs": last["epoch"],
            "test_loss": last["test"]["loss"], "variational": self.model.variational,
            "conditional": self.model.conditional, "class_names": self.class_names,
            "labels": self.test_labels.tolist(), "default_axes": self.default_axes(),
            "slider_ranges": self.slider_ranges(), "strip_steps": INTERPOLATION_STEPS,
            "sample_count": SAMPLE_COUNT, "max_points": DECODE_BATCHES[-1], "image_side": IMAGE_SIDE,
        }

    def default_axes(self) -> str:
        """The plane the figures show: z1 and z2 at latent 2, the first two principal components above."""
        return {1: "0", 2: "0,1"}.get(self.latent_dim, "pca")

    def slider_ranges(self) -> list[list[float]]:
        """Each dimension's slider spans the area of its linear grid, as the plane does."""
        return [[float(end) for end in cell_extent(*linear_grid_values(self.test_means[:, [axis, axis]],
                                                                        self.model.variational))[:2]]
                for axis in range(self.latent_dim)]

    def plane(self, query: dict) -> dict:
        """The plane through latent space the page draws: z = center + x * directions[0] + y * directions[1].
        At latent 1 the second direction is zero (the plane's y axis is no part of z)."""
        axes = query.get("axes", self.default_axes())
        d = self.latent_dim
        if axes == "pca" and d >= 2:
            center, directions, explained = principal_plane(self.test_means.astype(np.float64))
            title = f"first two principal components ({explained:.0%} of the variance)"
        else:
            try:
                chosen = [int(axis) for axis in axes.split(",")]
            except ValueError:
                chosen = []
            if len(set(chosen)) != len(chosen) or len(chosen) != min(d, 2) or not all(0 <= a < d for a in chosen):
                raise BadRequest(f"axes must be pca or two different dimensions I,J from 0 to {d - 1} "
                                 f"(at latent 1: 0), got {axes!r}")
            center, directions = np.zeros(d), np.zeros((2, d))
            directions[np.arange(len(chosen)), chosen] = 1.0
            title = " against ".join(f"z{axis + 1}" for axis in chosen)
        coords = (self.test_means - center) @ directions.T
        xs, ys = linear_grid_values(coords, self.model.variational)
        grids = {"linear": {"xs": xs.tolist(), "ys": ys.tolist()}}
        if self.model.variational:
            grids["normal"] = {"xs": normal_grid_values().tolist(), "ys": normal_grid_values().tolist()}
        return {"axes": axes, "title": title, "center": center.tolist(), "directions": directions.tolist(),
                "coords": np.round(coords, 4).tolist(), "extent": [float(end) for end in cell_extent(xs, ys)],
                "grids": grids}

    def points(self, value, name: str = "z") -> np.ndarray:
        """One latent point (d numbers) or a list of up to max_points of them, as (n, d) float32."""
        if isinstance(value, list) and value and isinstance(value[0], list):
            if len(value) > DECODE_BATCHES[-1]:
                raise BadRequest(f"{name} may hold at most {DECODE_BATCHES[-1]} points, got {len(value)}")
            return np.stack([numbers(point, self.latent_dim, f"each point of {name}") for point in value])
        return numbers(value, self.latent_dim, name)[None]

    def decode(self, request: dict) -> dict:
        z = self.points(request.get("z"))
        pixels = self.pixels(z, self.class_weights(self.requested_label(request), len(z))).tolist()
        return {"pixels": pixels if isinstance(request["z"][0], list) else pixels[0]}

    def encode(self, request: dict) -> dict:
        grey = numbers(request.get("pixels"), IMAGE_PIXELS, "pixels (grey levels)", 0, 255)
        if not (grey == np.round(grey)).all():
            raise BadRequest("pixels must be whole grey levels from 0 to 255")
        image = grey.astype(np.uint8).reshape(1, IMAGE_SIDE, IMAGE_SIDE)
        label = np.array([self.requested_label(request)], np.int32)
        with self.lock:
            mean, std, probabilities = self.to_code(self.params, image, label)
            reconstruction = to_uint8(np.asarray(probabilities)).reshape(IMAGE_PIXELS)
        return {"mean": np.asarray(mean)[0].tolist(), "std": None if std is None else np.asarray(std)[0].tolist(),
                "pixels": reconstruction.tolist()}

    def path_end(self, request: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An interpolation's end as (z, class weights): a point with the requested class, or a test
        digit's latent mean with its own class (so a conditional model's strip blends the two)."""
        end = request.get(name)
        if not isinstance(end, dict) or len(end) != 1 or not {"z", "index"} & set(end):
            raise BadRequest(f'{name} must be {{"z": [...]}} or {{"index": i}} (a test digit)')
        if "z" in end:
            label = self.requested_label(request)
            return numbers(end["z"], self.latent_dim, f"{name}.z"), self.class_weights(label, 1)[0]
        index = whole_number(end["index"], f"{name}.index", 0, len(self.test_means) - 1)
        return self.test_means[index], self.class_weights(self.test_labels[index], 1)[0]

    def interpolate(self, request: dict) -> dict:
        (start, start_class), (end, end_class) = (self.path_end(request, name) for name in ("start", "end"))
        z = np.linspace(start, end, INTERPOLATION_STEPS, dtype=np.float32)
        class_weights = np.linspace(start_class, end_class, INTERPOLATION_STEPS, dtype=np.float32)
        return {"start": start.tolist(), "end": end.tolist(), "pixels": self.pixels(z, class_weights).tolist()}

    def samples(self, request: dict) -> dict:
        if not self.model.variational:
            raise BadRequest("a plain autoencoder has no prior to sample from", HTTPStatus.CONFLICT)
        seed = whole_number(request.get("seed"), "seed", 0, 2**31 - 1)
        z = np.asarray(jax.random.normal(jax.random.key(seed), (SAMPLE_COUNT, self.latent_dim)))
        pixels = self.pixels(z, self.class_weights(self.requested_label(request), SAMPLE_COUNT))
        return {"z": z.tolist(), "pixels": pixels.tolist()}


# Path -> (method, handler); a handler answers (explorer, the query's fields or the JSON body) with a dict.
API = {
    "/api/info": ("GET", Explorer.info),
    "/api/plane": ("GET", Explorer.plane),
    "/api/decode": ("POST", Explorer.decode),
    "/api/encode": ("POST", Explorer.encode),
    "/api/interpolate": ("POST", Explorer.interpolate),
    "/api/samples": ("POST", Explorer.samples),
}


def load_explorer(workdir: Path) -> Explorer:
    """The finished run in `workdir` with its test set (binarized as evaluation does, if trained so)."""
    from vaejax.checkpoint import load_finished_run
    from vaejax.data import load_dataset
    from vaejax.models import binarized_test_images

    config, model, params, history = load_finished_run(workdir)
    dataset = load_dataset(config.dataset, config.data_dir)
    test_images = dataset.test_images
    if config.binarize == "dynamic":
        test_images = binarized_test_images(test_images)
    return Explorer(config, model, params, history, test_images, dataset.test_labels, dataset.class_names)


@functools.cache
def asset(name: str) -> bytes:
    return resources.files("vaejax").joinpath("explorer", name).read_bytes()


class RequestHandler(BaseHTTPRequestHandler):
    """Serves the page's files and answers the API; a bad request gets a 4xx JSON error."""

    protocol_version = "HTTP/1.1"  # keep-alive: the pointer's requests reuse one connection
    disable_nagle_algorithm = True  # headers and body leave together, not 40 ms apart (Nagle + delayed ACK)
    server: ExplorerServer

    def do_GET(self) -> None:
        self.answer("GET")

    def do_POST(self) -> None:
        self.answer("POST")

    def answer(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            body = self.read_body() if method == "POST" else None
            if method == "GET" and url.path in ASSETS:
                name, content_type = ASSETS[url.path]
                return self.send(HTTPStatus.OK, asset(name), content_type)
            if url.path not in API:
                raise BadRequest(f"no such path: {url.path}", HTTPStatus.NOT_FOUND)
            expected, handle = API[url.path]
            if method != expected:
                raise BadRequest(f"{url.path} answers {expected} only", HTTPStatus.METHOD_NOT_ALLOWED)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            result = handle(self.server.explorer, body if method == "POST" else query)
            self.send_json(HTTPStatus.OK, result)
        except BadRequest as error:
            self.send_json(error.status, {"error": str(error)})
        except Exception as error:  # a bug answers 500; the server keeps serving
            traceback.print_exc()
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {error!r}"})

    def read_body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise BadRequest("a POST needs a Content-Length", HTTPStatus.LENGTH_REQUIRED) from None
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read, so the connection cannot carry on
            raise BadRequest(f"a request body may hold at most {MAX_BODY_BYTES} bytes",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as error:
            raise BadRequest(f"the body is not JSON ({error})") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def send_json(self, status: HTTPStatus, payload: dict) -> None:
        self.send(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")

    def send(self, status: HTTPStatus, content: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args) -> None:
        """Silent: a line per pointer move would bury the address."""


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for the page's open connections

    def __init__(self, host: str, port: int, explorer: Explorer | None = None):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), RequestHandler)
        except OSError as error:
            raise VaejaxError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self.explorer = explorer

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(options: ExploreOptions) -> None:
    """Listen first (a port in use fails at once), then load the run, then serve until Ctrl-C."""
    server = ExplorerServer(options.host, options.port)
    try:
        server.explorer = load_explorer(options.workdir)
        print(f"exploring {options.workdir} at {server.url}  (Ctrl-C stops)", flush=True)
        server.serve_forever()
    finally:
        server.server_close()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--workdir", required=True, help="work directory of a finished run")
    parser.add_argument("--host", default=ExploreOptions.host,
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=ExploreOptions.port,
                        help="port to listen on; 0 picks a free one (default: %(default)s)")
    return parser


def options_from_flags(flags: argparse.Namespace) -> ExploreOptions:
    options = ExploreOptions(Path(flags.workdir), flags.host, flags.port)
    options.validate()
    return options


def run(options: ExploreOptions) -> int:
    serve(options)
    return 0


# Ctrl-C is how the server is meant to stop: exit code 0.
COMMAND = Command(PROG, build_parser, options_from_flags, run, interrupted="stopped", interrupted_exit_code=0)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    sys.exit(main())
