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

Who may ask (see `Access`): a request must name the server's own host and port in `Host` (421
otherwise: a DNS-rebinding page names its own domain); an API request from a browser must come from
the server's own page (`Origin`, `Sec-Fetch-Site`; 403 otherwise) and a POST must say
`Content-Type: application/json` (415 otherwise; another site cannot send that without a preflight,
which is not answered). With a `--host` other than 127.0.0.1, localhost or ::1, every request needs
the token printed in the address (`?token=`, then a cookie; 403 otherwise). Bodies are bounded in
size, nesting and number length before they are parsed, and every value is checked before NumPy or
JAX sees it, so a request gets a 4xx or a finite answer, never a 500.
"""

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import json
import math
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

import jax
import numpy as np

from vaejax import validation
from vaejax.command import Command, OneLineParser
from vaejax.config import Config
from vaejax.data import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES
from vaejax.errors import VaejaxError
from vaejax.files import is_number, is_whole_number
from vaejax.inference import (
    INTERPOLATION_STEPS,
    cell_extent,
    evaluation_images,
    full_precision,
    latent_means,
    linear_grid_values,
    make_pixel_decoder,
    normal_grid_values,
    principal_plane,
    prior_draws,
    to_uint8,
)
from vaejax.keys import root_key
from vaejax.models import AutoEncoder, decode, encode, images_to_float

PROG = "python -m vaejax.explore"
GRID_POINTS = 14 * 14  # the figures' grids
SAMPLE_COUNT = 16
# The pointer's point; anything else (a grid, a strip, the samples: a click, not a pointer move) is padded
# to a grid, so the page needs two decoder programs, not one per size.
DECODE_BATCHES = (1, GRID_POINTS)
# What a request body may hold, checked before it is parsed: the deepest request ({"z": [[...], ...]})
# nests 3, and float64's longest literal has 24 characters.
MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 8
MAX_NUMBER_CHARS = 32
# The connections a browser's burst opens (six per host, each reused) and what an idle one may hold.
LISTEN_BACKLOG = 128  # Python's default of 5 drops SYNs of a burst of 20: each waits 1 s to be retried
IDLE_TIMEOUT_S = 20.0  # a connection silent this long (or a request stalled this long) is closed
MAX_CONNECTIONS = 64  # open at once; more are answered 503 at once, well before file descriptors run out
ACCEPT_RETRY_S = 0.1  # out of descriptors, accept waits this long before it tries again (never spins)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # --host values that need no token
JSON_TYPE = "application/json"
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


def shown(text: str, most: int = 40) -> str:
    """`text` quoted for an error message, cut to `most` characters (a client may send megabytes)."""
    return repr(text if len(text) <= most else text[:most] + "...")


OPENING, CLOSING = (np.frombuffer(brackets, np.uint8) for brackets in (b"[{", b"]}"))


def json_depth(data: bytes) -> int:
    """How deep the arrays and objects of JSON text `data` nest, counted without parsing (so without
    recursion): escaped characters go first, then brackets between an odd and an even quote are inside
    a string. Exact for valid JSON; on invalid JSON the parser stops where this count may part from it."""
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(plain, np.uint8)
    outside = np.cumsum(codes == ord('"')) % 2 == 0
    step = np.isin(codes, OPENING).astype(np.int64) - np.isin(codes, CLOSING)
    return int(np.cumsum(step * outside).max(initial=0))


def number_literal(text: str, kind: type) -> int | float:
    """A JSON number literal as `kind`, refused when too long (a 500-digit integer) or not finite."""
    if len(text) > MAX_NUMBER_CHARS:
        raise BadRequest(f"numbers may have at most {MAX_NUMBER_CHARS} characters, got one of {len(text)}")
    value = kind(text)
    if not math.isfinite(value):
        raise BadRequest(f"numbers must be finite, got {text}")
    return value


def not_a_number(text: str):
    """What json reads for NaN, Infinity and -Infinity: a refusal."""
    raise BadRequest(f"numbers must be finite, got {text}")


def parse_body(data: bytes) -> dict:
    """A request body as a JSON object: UTF-8, at most MAX_JSON_DEPTH deep and MAX_NUMBER_CHARS a
    number (both checked before any recursion or conversion), no NaN or Infinity; else BadRequest."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body must be JSON in UTF-8") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body's arrays and objects may nest at most {MAX_JSON_DEPTH} deep")
    try:
        body = json.loads(text, parse_int=functools.partial(number_literal, kind=int),
                          parse_float=functools.partial(number_literal, kind=float), parse_constant=not_a_number)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"the body is not JSON ({error})") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def only(request: dict, *fields: str) -> None:
    """Refuse a field the request does not take (a misspelt `label` would otherwise be ignored)."""
    unknown = sorted(set(request) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field {shown(unknown[0])}: this request takes {', '.join(fields)}")


def numbers(value, length: int, name: str, low: float = -np.inf, high: float = np.inf, why: str = "") -> np.ndarray:
    """`value` as `length` finite float32 numbers in [low, high], or BadRequest (saying `why` the bounds)."""
    if (not isinstance(value, list) or len(value) != length
            or not all(is_number(item) for item in value)):
        raise BadRequest(f"{name} must be a list of {length} numbers")
    try:
        array = np.asarray(value, np.float64)
    except OverflowError:  # an integer beyond float64 (the parser's bound on literals keeps them out)
        array = np.full(length, np.inf)
    if not (np.abs(array) <= np.finfo(np.float32).max).all():  # NaN fails too
        raise BadRequest(f"{name} must be finite (float32) numbers")
    if not ((array >= low).all() and (array <= high).all()):
        raise BadRequest(f"{name} must lie from {low:g} to {high:g}{why}")
    return array.astype(np.float32)


def requested_integer(value, name: str, low: int, high: int) -> int:
    if not is_whole_number(value) or not low <= value <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return value


def finite(values: np.ndarray, what: str) -> np.ndarray:
    """`values`, checked: with every request within bounds a model of finite parameters gives finite
    numbers, so anything else is the server's fault (500), never a NaN image sent as if it were one."""
    if not np.isfinite(values).all():
        raise RuntimeError(f"{what} is not finite")
    return values


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
        # Reported pixels and codes at full float32 precision, as the figures and evaluation compute them;
        # its own decoder, compiled for the fixed sizes that `warm_up` compiles.
        self.to_pixels = make_pixel_decoder(model)
        self.to_code = jax.jit(full_precision(self.code_and_reconstruction))
        self.test_means = latent_means(model, params, test_images, test_labels)
        self.z_limit = self.latent_limit()
        self.warm_up()

    def latent_limit(self) -> float:
        """How far from 0 a requested z may lie: the power of ten at least ten times the reach of the test
        set's codes and of the sliders. Beyond, the page has nothing to show, and far enough out a
        float32 decoder (or the line between two such points) overflows into NaN."""
        reach = max(1.0, float(np.abs(self.test_means).max()), *(abs(end) for r in self.slider_ranges() for end in r))
        return 10.0 ** (math.ceil(math.log10(reach)) + 1)

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
        """The class asked for (checked wherever given); an unconditional model decodes class 0."""
        if "label" in request:
            label = requested_integer(request["label"], "label", 0, NUM_CLASSES - 1)
            return label if self.model.conditional else 0
        if self.model.conditional:
            raise BadRequest(f"label (0 to {NUM_CLASSES - 1}) is required by a class-conditional model")
        return 0

    def pixels(self, z: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
        """Decoded grey levels uint8 (n, 784) of z (n, d), in the smallest fixed batch that holds them."""
        count = len(z)
        size = next(size for size in DECODE_BATCHES if size >= count)
        with self.lock:
            probabilities = np.asarray(self.to_pixels(self.params, padded(z, size), padded(class_weights, size)))
        return to_uint8(finite(probabilities[:count], "the decoder's output")).reshape(count, IMAGE_PIXELS)

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
            "z_limit": self.z_limit,
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
        if not isinstance(axes, str):
            raise BadRequest("axes must be text: pca or I,J")
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
                                 f"(at latent 1: 0), got {shown(axes)}")
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

    def point(self, value, name: str) -> np.ndarray:
        """One latent point: d numbers within z_limit of 0."""
        return numbers(value, self.latent_dim, name, -self.z_limit, self.z_limit,
                       " (z_limit: ten times the reach of the test set's codes, rounded up to a power of ten)")

    def points(self, value, name: str = "z") -> np.ndarray:
        """One latent point (d numbers) or a list of up to max_points of them, as (n, d) float32."""
        if isinstance(value, list) and value and isinstance(value[0], list):
            if len(value) > DECODE_BATCHES[-1]:
                raise BadRequest(f"{name} may hold at most {DECODE_BATCHES[-1]} points, got {len(value)}")
            return np.stack([self.point(point, f"each point of {name}") for point in value])
        return self.point(value, name)[None]

    def decode(self, request: dict) -> dict:
        only(request, "z", "label")
        z = self.points(request.get("z"))
        pixels = self.pixels(z, self.class_weights(self.requested_label(request), len(z))).tolist()
        return {"pixels": pixels if isinstance(request["z"][0], list) else pixels[0]}

    def encode(self, request: dict) -> dict:
        only(request, "pixels", "label")
        grey = numbers(request.get("pixels"), IMAGE_PIXELS, "pixels (grey levels)", 0, 255)
        if not (grey == np.round(grey)).all():
            raise BadRequest("pixels must be whole grey levels from 0 to 255")
        image = grey.astype(np.uint8).reshape(1, IMAGE_SIDE, IMAGE_SIDE)
        label = np.array([self.requested_label(request)], np.int32)
        with self.lock:
            mean, std, probabilities = self.to_code(self.params, image, label)
        reconstruction = to_uint8(finite(np.asarray(probabilities), "the decoder's output")).reshape(IMAGE_PIXELS)
        mean = finite(np.asarray(mean)[0], "the encoder's mean")
        std = None if std is None else finite(np.asarray(std)[0], "the encoder's std")
        return {"mean": mean.tolist(), "std": None if std is None else std.tolist(), "pixels": reconstruction.tolist()}

    def path_end(self, request: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An interpolation's end as (z, class weights): a point with the requested class, or a test
        digit's latent mean with its own class (so a conditional model's strip blends the two)."""
        end = request.get(name)
        if not isinstance(end, dict) or len(end) != 1 or not {"z", "index"} & set(end):
            raise BadRequest(f'{name} must be {{"z": [...]}} or {{"index": i}} (a test digit)')
        if "z" in end:
            label = self.requested_label(request)
            return self.point(end["z"], f"{name}.z"), self.class_weights(label, 1)[0]
        index = requested_integer(end["index"], f"{name}.index", 0, len(self.test_means) - 1)
        return self.test_means[index], self.class_weights(self.test_labels[index], 1)[0]

    def interpolate(self, request: dict) -> dict:
        only(request, "start", "end", "label")
        (start, start_class), (end, end_class) = (self.path_end(request, name) for name in ("start", "end"))
        z = np.linspace(start, end, INTERPOLATION_STEPS, dtype=np.float32)
        class_weights = np.linspace(start_class, end_class, INTERPOLATION_STEPS, dtype=np.float32)
        return {"start": start.tolist(), "end": end.tolist(), "pixels": self.pixels(z, class_weights).tolist()}

    def samples(self, request: dict) -> dict:
        only(request, "seed", "label")
        if not self.model.variational:
            raise BadRequest("a plain autoencoder has no prior to sample from", HTTPStatus.CONFLICT)
        seed = requested_integer(request.get("seed"), "seed", 0, 2**31 - 1)
        z = np.asarray(prior_draws(root_key(seed), SAMPLE_COUNT, self.latent_dim))
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

    config, model, params, history = load_finished_run(workdir)
    dataset = load_dataset(config.dataset, config.data_dir)
    test_images = evaluation_images(dataset.test_images, config.binarized)
    return Explorer(config, model, params, history, test_images, dataset.test_labels, dataset.class_names)


@functools.cache
def asset(name: str) -> bytes:
    return resources.files("vaejax").joinpath("explorer", name).read_bytes()


def host_key(name: str) -> str:
    """A host name as compared: an IP address in its one canonical form (IPv6 in brackets in a URL),
    any other name in lower case."""
    try:
        if name.startswith("["):
            return ipaddress.IPv6Address(name[1:-1]).compressed
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return "" if name.startswith("[") else name.lower()


AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:@/]+)(?::([0-9]{1,5}))?")


@dataclass(frozen=True)
class Access:
    """Who may use a server listening on `host`:`port`.

    `Host` must name this server: 127.0.0.1, localhost, [::1] or the `--host` given (listening on every
    address, 0.0.0.0 or ::, any IP address or this machine's name), with its port; a DNS-rebinding page
    reaches the server under its own domain's name, so it is refused. A browser's API request must come
    from the server's own page: an `Origin`, when sent, of one of those names and the port;
    `Sec-Fetch-Site`, when sent, same-origin (or none: typed into the address bar). Without either
    header the client is not a browser page (curl, a script) and may ask. With a token (any `--host`
    but the loopback three), every request carries it: `?token=` (the address printed, which also sets
    an HttpOnly, SameSite=Strict cookie the page's requests then carry) or that cookie."""

    host: str
    port: int
    token: str | None

    @property
    def cookie(self) -> str:
        """The token's cookie, named by port: cookies are shared by every port of a host."""
        return f"vaejax-explore-{self.port}"

    @functools.cached_property
    def names(self) -> frozenset[str]:
        return frozenset(host_key(name) for name in (*LOOPBACK_HOSTS, self.host))

    @functools.cached_property
    def any_address(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def serves(self, authority: str) -> bool:
        """Whether `host[:port]` (a `Host` header, an `Origin` without its scheme) names this server."""
        match = AUTHORITY.fullmatch(authority)
        if match is None or int(match[2] or 80) != self.port:
            return False
        name = host_key(match[1])
        if name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name == host_key(socket.gethostname())

    def check(self, headers, api: bool, query: dict) -> str | None:
        """Refuse (BadRequest) a request this server does not answer; the cookie to set, if any."""
        hosts = headers.get_all("Host") or []
        if len(hosts) != 1:
            raise BadRequest("a request needs one Host header")
        if not self.serves(hosts[0]):
            raise BadRequest(f"this server is {self.host}:{self.port}, not {shown(hosts[0])}",
                             HTTPStatus.MISDIRECTED_REQUEST)
        set_cookie = self.check_token(headers, query)
        if api:
            origins = headers.get_all("Origin") or []
            if len(origins) > 1 or origins and not (
                    origins[0].startswith("http://") and self.serves(origins[0].removeprefix("http://"))):
                raise BadRequest(f"the API answers this server's own page only, not {shown(origins[0])}",
                                 HTTPStatus.FORBIDDEN)
            site = headers.get("Sec-Fetch-Site", "same-origin")
            if site not in ("same-origin", "none"):
                raise BadRequest(f"the API answers this server's own page only, not a {shown(site)} request",
                                 HTTPStatus.FORBIDDEN)
        return set_cookie

    def check_token(self, headers, query: dict) -> str | None:
        if self.token is None:
            return None
        expected = self.token.encode()
        if secrets.compare_digest(query.get("token", "").encode(), expected):
            return f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        for part in ";".join(headers.get_all("Cookie") or []).split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie and secrets.compare_digest(value.encode(), expected):
                return None
        raise BadRequest(f"this server listens on {self.host}, not loopback: open the address it printed, "
                         "with its ?token=", HTTPStatus.FORBIDDEN)


# Sent with every answer: no caching, no content sniffing, never inside another site's frame.
SAFE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "frame-ancestors 'none'"}


class RequestHandler(BaseHTTPRequestHandler):
    """Serves the page's files and answers the API; a refused or bad request gets a 4xx JSON error."""

    protocol_version = "HTTP/1.1"  # keep-alive: the pointer's requests reuse one connection
    disable_nagle_algorithm = True  # headers and body leave together, not 40 ms apart (Nagle + delayed ACK)
    server: ExplorerServer

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # each read and write of the connection, idle ones too
        super().setup()

    def do_GET(self) -> None:
        self.answer("GET")

    def do_POST(self) -> None:
        self.answer("POST")

    def answer(self, method: str) -> None:
        """Check who asks, then what, and answer; a body left unread closes the connection after."""
        path, _, query_text = self.path.partition("#")[0].partition("?")
        body_read, headers = False, {}
        try:
            if not path.startswith("/"):
                raise BadRequest("the request target must be a path")
            query = {key: values[-1] for key, values in parse_qs(query_text).items()}
            set_cookie = self.server.access.check(self.headers, path.startswith("/api/"), query)
            if set_cookie:
                headers["Set-Cookie"] = set_cookie
            if method == "GET" and path in ASSETS:
                name, content_type = ASSETS[path]
                status, content = HTTPStatus.OK, asset(name)
            else:
                if path not in API:
                    raise BadRequest(f"no such path: {shown(path)}", HTTPStatus.NOT_FOUND)
                expected, handle = API[path]
                if method != expected:
                    raise BadRequest(f"{path} answers {expected} only", HTTPStatus.METHOD_NOT_ALLOWED)
                if method == "POST":
                    body, body_read = self.read_body(), True
                status, content = HTTPStatus.OK, json_bytes(handle(self.server.explorer,
                                                                   body if method == "POST" else query))
                content_type = JSON_TYPE
        except BadRequest as error:
            status, content, content_type = error.status, json_bytes({"error": str(error)}), JSON_TYPE
        except Exception as error:  # a bug answers 500 (the traceback on the server's terminal only)
            traceback.print_exc()
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            content, content_type = json_bytes({"error": f"internal error: {error!r}"}), JSON_TYPE
        if not body_read and (method == "POST" or "Content-Length" in self.headers
                              or "Transfer-Encoding" in self.headers):
            self.close_connection = True  # its body's bytes would be read as the next request
        try:
            self.send(status, content, content_type, headers)
        except OSError:  # the client went away, or stopped reading for idle_timeout
            self.close_connection = True

    def read_body(self) -> dict:
        if "Transfer-Encoding" in self.headers:
            raise BadRequest("a POST needs a Content-Length (no chunked bodies)", HTTPStatus.LENGTH_REQUIRED)
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1 or not re.fullmatch(r"[0-9]{1,12}", lengths[0]):
            raise BadRequest("a POST needs one Content-Length", HTTPStatus.LENGTH_REQUIRED)
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"a request body may hold at most {MAX_BODY_BYTES} bytes",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if self.headers.get_content_type() != JSON_TYPE:
            raise BadRequest(f"a POST's body must be sent as Content-Type: {JSON_TYPE}",
                             HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            data = self.rfile.read(length)
        except OSError:
            data = b""
        if len(data) < length:
            raise BadRequest(f"the body did not arrive within {self.server.idle_timeout:g} s",
                             HTTPStatus.REQUEST_TIMEOUT)
        return parse_body(data)

    def send(self, status: HTTPStatus, content: bytes, content_type: str, headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in (SAFE_HEADERS | headers).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args) -> None:
        """Silent: a line per pointer move would bury the address."""


def json_bytes(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class ExplorerServer(ThreadingHTTPServer):
    """The HTTP server: a thread per connection, at most `max_connections` open (more are answered 503
    and closed at once), each closed after `idle_timeout` seconds without a byte; an accept that fails
    for want of file descriptors waits a moment instead of spinning."""

    daemon_threads = True  # Ctrl-C does not wait for the page's open connections
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, host: str, port: int, explorer: Explorer | None = None, *,
                 idle_timeout: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), RequestHandler)
        except (OSError, TypeError) as error:  # TypeError: a name with a NUL, or one IDNA cannot encode
            raise VaejaxError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}") from None
        self.explorer, self.idle_timeout, self.max_connections = explorer, idle_timeout, max_connections
        token = None if host.lower() in LOOPBACK_HOSTS else secrets.token_urlsafe(24)
        self.access = Access(host, self.server_address[1], token)
        self.open_connections, self.count_lock = 0, threading.Lock()
        self.out_of_descriptors = False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        address = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        return address if self.access.token is None else f"{address}?token={self.access.token}"

    def get_request(self):
        try:
            request = super().get_request()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                if not self.out_of_descriptors:
                    print(f"{PROG}: cannot accept a connection ({error.strerror}); retrying", file=sys.stderr)
                self.out_of_descriptors = True
                time.sleep(ACCEPT_RETRY_S)  # the pending connection keeps the socket readable
            raise
        self.out_of_descriptors = False
        return request

    def process_request(self, request, client_address) -> None:
        with self.count_lock:
            full = self.open_connections >= self.max_connections
            if not full:
                self.open_connections += 1
        if full:
            refuse(request, f"the explorer has {self.max_connections} connections open; try again")
        else:
            super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        """The end of every connection process_request took (its thread's last step)."""
        with self.count_lock:
            self.open_connections -= 1
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is no error of ours
            super().handle_error(request, client_address)


def refuse(connection: socket.socket, message: str) -> None:
    """Answer 503 on a new connection without reading it, and close it; never waits on the client."""
    content = json_bytes({"error": message})
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\nContent-Length: {len(content)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n")
    try:
        connection.setblocking(False)
        connection.send(head.encode() + content)
        connection.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    connection.close()


def serve(options: ExploreOptions) -> None:
    """Listen first (a port in use fails at once), then load the run, then serve until Ctrl-C."""
    server = ExplorerServer(options.host, options.port)
    try:
        server.explorer = load_explorer(options.workdir)
        token = ("" if server.access.token is None else
                 f"; --host is not {', '.join(LOOPBACK_HOSTS)}, so every request needs the token in this address")
        print(f"exploring {options.workdir} at {server.url}  (Ctrl-C stops{token})", flush=True)
        server.serve_forever()
    finally:
        server.server_close()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--workdir", required=True, help="work directory of a finished run")
    parser.add_argument("--host", default=ExploreOptions.host,
                        help="address to listen on (default: %(default)s, this machine only; any other than "
                             "127.0.0.1, localhost or ::1 needs the token printed in the address)")
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
