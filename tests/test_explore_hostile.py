"""Hostile requests to `python -m vaejax.explore`'s server: other hosts and origins, the token beyond
loopback, bodies built to break the parser or the numbers, and floods of connections. Every one gets a
4xx or a valid, finite answer; none a 500, a traceback or a hang."""

import contextlib
import http.client
import json
import math
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_explore import CHROMIUM, untrained_explorer

from vaejax import explore

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@pytest.fixture(scope="module")
def explorer(small_mnist):
    """mlp_vae at latent 2, untrained: a variational model that compiles in a moment."""
    return untrained_explorer(small_mnist, model="mlp_vae", latent_dim=2)


@contextlib.contextmanager
def serving(explorer, host: str = "127.0.0.1", **options):
    server = explore.ExplorerServer(host, 0, explorer, **options)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(explorer):
    with serving(explorer) as server:
        yield server


def authority(server) -> str:
    host, port = server.server_address[:2]
    return f"{host}:{port}"


def ask(server, method: str, path: str, body=None, headers=None):
    """(status, headers, JSON answer or bytes) of one request; Host is the server's unless given."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    headers = {"Host": authority(server)} | (headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    if response.getheader("Content-Type") == "application/json":
        content = json.loads(content)
    return response.status, response.headers, content


def exchange(server, raw: bytes, timeout: float = 10) -> bytes:
    """Send `raw` on a new connection, end the sending side, and read the answer until the server closes."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as connection:
        connection.sendall(raw)
        connection.shutdown(socket.SHUT_WR)
        return read_all(connection)


def read_all(connection: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None


def still_serving(server) -> None:
    status, _, answer = ask(server, "POST", "/api/decode", {"z": [0.5, -0.5]})
    assert status == 200 and len(answer["pixels"]) == 784


# --- who may ask ---------------------------------------------------------------------------------


def test_only_this_servers_host_and_port_are_answered(server):
    """A DNS-rebinding page reaches 127.0.0.1 under its own domain's name: refused, page and API alike."""
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert ask(server, "GET", "/api/info", headers={"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.:{port}",
                 f"127.0.0.1.evil.example:{port}", f"user@127.0.0.1:{port}", ""):
        for path in ("/", "/api/info"):
            status, _, answer = ask(server, "GET", path, headers={"Host": host})
            assert status == 421 and "this server is" in answer["error"], (host, path)
    assert status_of(exchange(server, b"GET /api/info HTTP/1.1\r\n\r\n")) == 400  # no Host
    two_hosts = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n".encode()
    assert status_of(exchange(server, two_hosts)) == 400
    absolute = f"GET http://evil.example/api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    assert status_of(exchange(server, absolute)) == 400


def test_the_api_answers_its_own_page_only(server):
    """Another site's page may POST without a preflight (a form, or fetch with a text/plain body): the
    browser then says where it comes from, and the server refuses."""
    own = f"http://{authority(server)}"
    z = {"z": [0.0, 0.0]}
    assert ask(server, "POST", "/api/decode", z, {"Origin": own, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert ask(server, "POST", "/api/decode", z)[0] == 200  # curl, a script: no Origin
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": own.replace("http", "https")},
                    {"Origin": f"http://localhost:{server.server_address[1] + 1}"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        for method, path, body in (("POST", "/api/decode", z), ("GET", "/api/info", None),
                                   ("GET", "/api/plane?axes=0,1", None)):
            status, _, answer = ask(server, method, path, body, headers)
            assert status == 403 and "own page only" in answer["error"], (headers, path)
    # A form's or a no-preflight fetch's body is not JSON, whatever it holds.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, _, answer = ask(server, "POST", "/api/decode", z, {"Content-Type": content_type})
        assert status == 415 and "application/json" in answer["error"]
    assert ask(server, "POST", "/api/decode", z, {"Content-Type": "application/json; charset=utf-8"})[0] == 200
    # The page itself may be opened from a link anywhere (a navigation, not data), never inside a frame.
    status, headers, _ = ask(server, "GET", "/", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 200 and headers["X-Frame-Options"] == "DENY"
    assert ask(server, "GET", "/api/info", headers={"Sec-Fetch-Site": "none"})[0] == 200  # typed in the address bar
    still_serving(server)


def test_a_loopback_server_needs_no_token(server):
    assert server.access.token is None and "?" not in server.url
    status, headers, _ = ask(server, "GET", "/")
    assert status == 200 and headers["Set-Cookie"] is None


def test_beyond_loopback_every_request_needs_the_token(explorer):
    """Any --host but 127.0.0.1, localhost or ::1 (here 127.0.0.2, which Linux routes to this machine)."""
    try:
        context = serving(explorer, "127.0.0.2")
        server = context.__enter__()
    except explore.VaejaxError:
        pytest.skip("cannot listen on 127.0.0.2 here")
    try:
        token, port = server.access.token, server.server_address[1]
        assert len(token) >= 32 and server.url == f"http://127.0.0.2:{port}/?token={token}"
        for path in ("/", "/explorer.js", "/api/info", f"/?token={token[:-1]}", "/?token="):
            status, _, answer = ask(server, "GET", path)
            assert status == 403 and "?token=" in answer["error"], path
        assert ask(server, "POST", "/api/decode", {"z": [0, 0]})[0] == 403
        status, headers, _ = ask(server, "GET", f"/?token={token}")
        assert status == 200
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"vaejax-explore-{port}={token};") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        carried = {"Cookie": f"other=1; vaejax-explore-{port}={token}"}
        assert ask(server, "GET", "/api/info", headers=carried)[0] == 200
        own = {"Origin": f"http://127.0.0.2:{port}"} | carried
        assert ask(server, "POST", "/api/decode", {"z": [0, 0]}, own)[0] == 200
        assert ask(server, "POST", f"/api/decode?token={token}", {"z": [0, 0]})[0] == 200  # curl
        wrong = {"Cookie": f"vaejax-explore-{port}={token[::-1]}"}
        assert ask(server, "GET", "/api/info", headers=wrong)[0] == 403
        assert ask(server, "GET", f"/api/info?token={token}", headers={"Host": f"evil.example:{port}"})[0] == 421
    finally:
        context.__exit__(None, None, None)


def test_the_start_up_line_says_the_token_is_needed(explorer, monkeypatch, capsys):
    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    monkeypatch.setattr(explore, "load_explorer", lambda workdir: explorer)
    monkeypatch.setattr(explore.ExplorerServer, "serve_forever", interrupted)
    if explore.main(["--workdir", ".", "--host", "127.0.0.2", "--port", "0"]) == 2:
        pytest.skip("cannot listen on 127.0.0.2 here")
    line = capsys.readouterr().out
    assert "/?token=" in line and "every request needs the token" in line


def test_which_names_a_server_answers_to():
    local = explore.Access("127.0.0.1", 8000, None)
    assert all(local.serves(name) for name in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "[0:0::1]:8000"))
    assert not any(local.serves(name) for name in ("10.0.0.1:8000", "evil.example:8000", "[::1]", "localhost:80",
                                                   "127.0.0.1:8000:8000", "[127.0.0.1]:8000", "localhost:99999"))
    everywhere = explore.Access("0.0.0.0", 80, "token")
    assert all(everywhere.serves(name) for name in ("192.168.1.5", "10.0.0.1:80", "[fe80::1]:80", "localhost",
                                                    f"{socket.gethostname()}:80"))
    assert not any(everywhere.serves(name) for name in ("evil.example", "192.168.1.5:81"))
    named = explore.Access("Workstation.Lan", 8000, "token")
    assert named.serves("workstation.lan:8000") and not named.serves("10.0.0.1:8000")


# --- what a request may hold ---------------------------------------------------------------------


def test_bodies_built_to_break_the_parser_get_a_400(server):
    cases = [
        (b'{"z": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nest at most"),  # RecursionError before
        (b'{"z": [' + b"9" * 500 + b", 0]}", "at most 32 characters"),  # OverflowError before
        (b'{"seed": 1' + b"0" * 400 + b"}", "at most 32 characters"),
        (b'{"z": [1e400, 0]}', "finite"),
        (b'{"z": [-Infinity, 0]}', "finite"),
        (b'{"z": [NaN, 0]}', "finite"),
        (b'{"z": [0, 0]}'.decode().encode("utf-16"), "UTF-8"),
        (b'{"z": "\xff"}', "UTF-8"),
        (b'[0, 0]', "JSON object"),
        (b'{"z": [0, 0], "lable": 3}', "unknown field 'lable'"),
        (b'{"z": [0, 0]', "not JSON"),
        (b"", "not JSON"),
    ]
    for body, message in cases:
        status, _, answer = ask(server, "POST", "/api/decode", body)
        assert status == 400 and message in answer["error"], (body[:40], answer)
    port = server.server_address[1]
    # The length alone is refused (sent with the body, the refusal may meet the client still sending).
    too_long = (f"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {explore.MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    assert status_of(exchange(server, too_long)) == 413
    for length in ("1_0", "+10", " 10", "10, 10"):
        raw = (f"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {length}\r\n\r\n" + '{"z":[0,0]}').encode()
        assert status_of(exchange(server, raw)) in (400, 411), length
    chunked = (f"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\nb\r\n{\"z\":[0,0]}\r\n0\r\n\r\n").encode()
    answer = exchange(server, chunked)
    assert status_of(answer) == 411 and answer.count(b"HTTP/1.1") == 1  # the chunks are not read as a request
    still_serving(server)


def test_points_far_outside_the_data_get_a_400_and_never_nan(server, explorer):
    """Two far-apart finite points made NaN images (the line between them overflows float32)."""
    limit = explorer.z_limit
    status, _, info = ask(server, "GET", "/api/info")
    assert info["z_limit"] == limit and math.log10(limit) == round(math.log10(limit))
    assert limit >= 10 * np.abs(explorer.test_means).max()
    far = [[3e38, -3e38], [-1e30, 1e30], [limit * 1.01, 0.0]]
    for z in far:
        status, _, answer = ask(server, "POST", "/api/decode", {"z": z})
        assert status == 400 and "z_limit" in answer["error"], z
    status, _, answer = ask(server, "POST", "/api/interpolate", {"start": {"z": far[0]}, "end": {"z": far[1]}})
    assert status == 400 and "z_limit" in answer["error"]
    edge = [[limit, -limit], [-limit, limit]]
    status, _, answer = ask(server, "POST", "/api/decode", {"z": edge})
    assert status == 200 and np.isin(np.asarray(answer["pixels"]), np.arange(256)).all()
    status, _, answer = ask(server, "POST", "/api/interpolate", {"start": {"z": edge[0]}, "end": {"z": edge[1]}})
    assert status == 200 and np.isfinite(answer["start"] + answer["end"]).all()


def json_limits_kept(value, depth: int = 0) -> bool:
    """Whether `value`, as json.dumps writes it, keeps parse_body's bounds (depth, finite, literal length)."""
    if isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return depth < explore.MAX_JSON_DEPTH and all(json_limits_kept(item, depth + 1) for item in items)
    if isinstance(value, float):
        return math.isfinite(value) and len(repr(value)) <= explore.MAX_NUMBER_CHARS
    if isinstance(value, int) and not isinstance(value, bool):
        return len(str(value)) <= explore.MAX_NUMBER_CHARS
    return True


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-10**40, 10**40) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)


def nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


@PROPERTY
@given(data=st.binary(max_size=300))
def test_the_parser_on_arbitrary_bytes(data):
    try:
        assert isinstance(explore.parse_body(data), dict)
    except explore.BadRequest as error:
        assert error.status == 400 and "\n" not in str(error)


@PROPERTY
@given(body=st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4), depth=st.integers(0, 12),
       text_brackets=st.text("[]{}\"\\", max_size=12))
def test_the_parser_on_arbitrary_json(body, depth, text_brackets):
    """Brackets, quotes and backslashes inside strings do not count; the answer is the value itself
    exactly when the bounds are kept, BadRequest otherwise."""
    body = {"deep": nested(body, depth), "string": text_brackets}
    data = json.dumps(body).encode()
    try:
        parsed = explore.parse_body(data)
    except explore.BadRequest as error:
        assert error.status == 400 and not json_limits_kept(body)
    else:
        assert json_limits_kept(body) and json.dumps(parsed) == json.dumps(body)


NUMBERS = (st.floats(-4, 4) | st.integers(-3, 3) | st.floats(allow_nan=True, allow_infinity=True)
           | st.integers(-10**40, 10**40) | st.booleans() | st.text(max_size=2))


def mostly(valid, invalid):
    """Values from `valid` two times in three, else from `invalid`: enough answers to check them."""
    return valid | valid | invalid


POINTS = mostly(st.lists(st.floats(-120, 120), min_size=2, max_size=2),  # z_limit is 100
                st.lists(NUMBERS, min_size=1, max_size=3))
PATH_ENDS = mostly(st.fixed_dictionaries({"z": POINTS}) | st.fixed_dictionaries({"index": st.integers(0, 299)}),
                   st.fixed_dictionaries({"index": st.integers(-2, 400) | NUMBERS})
                   | st.dictionaries(st.sampled_from(["z", "index", "label"]), POINTS | st.integers(-1, 300)))
# Per path: the fields it takes, drawn mostly with values of the right shape, some not.
REQUESTS = {
    "/api/decode": {"z": mostly(POINTS | st.lists(POINTS, min_size=1, max_size=4),
                                POINTS.map(lambda point: [point] * 197) | JSON_VALUES)},
    "/api/encode": {"pixels": mostly(st.binary(min_size=784, max_size=784).map(list),
                                     st.binary(min_size=783, max_size=785).map(lambda grey: [*grey[:-1], 256])
                                     | st.lists(NUMBERS, max_size=10) | JSON_VALUES)},
    "/api/interpolate": {"start": PATH_ENDS, "end": PATH_ENDS},
    "/api/samples": {"seed": mostly(st.integers(0, 2**31 - 1), NUMBERS | st.integers(-1, 2**31))},
    "/api/plane": {"axes": mostly(st.sampled_from(["pca", "0,1", "1,0"]),
                                  st.sampled_from(["0", "0,0", "1,2", "0,1,", " 1,0"]) | st.text(max_size=6))},
    "/api/info": {},
}
LABELS = mostly(st.integers(0, 9), st.integers(-1, 10) | NUMBERS)


@st.composite
def api_requests(draw):
    path = draw(st.sampled_from(sorted(REQUESTS)))
    fields = REQUESTS[path]
    if draw(st.booleans()) and draw(st.booleans()):  # now and then a field missing
        fields = {name: value for name, value in fields.items() if draw(st.booleans())}
    request = draw(st.fixed_dictionaries(fields, optional={"label": LABELS}))
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):  # any value, or a field not taken
        request[draw(st.sampled_from([*fields, "lable"]) | st.text(max_size=3))] = draw(JSON_VALUES)
    return path, request


@PROPERTY
@given(path_and_request=api_requests())
def test_every_request_gets_a_4xx_or_a_finite_answer(explorer, path_and_request):
    path, request = path_and_request
    try:
        answer = explore.API[path][1](explorer, request)
    except explore.BadRequest as error:
        assert 400 <= error.status < 500
        event(f"{path}: {error.status}")
        return
    event(f"{path}: answered")
    json.loads(explore.json_bytes(answer))  # finite numbers only (allow_nan=False)
    if "pixels" in answer:
        assert np.isin(np.asarray(answer["pixels"]), np.arange(256)).all()


@pytest.fixture(scope="module")
def raw_server(explorer):
    with serving(explorer, idle_timeout=2.0) as server:
        yield server


def requests_of_parts(port: int):
    """Requests built of plausible and hostile parts: methods, targets, Host, Origin, lengths, bodies."""
    part = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=12)
    methods, targets = st.sampled_from(["GET", "POST"]), st.sampled_from(["/api/decode", "/api/info", "/"])
    line = st.tuples(methods | methods | st.sampled_from(["PUT", "OPTIONS", "HEAD", "G\x00T"]) | part,
                     targets | targets | st.sampled_from(["/api/plane?axes=0,1", "*", "//evil/api/info",
                                                          "/api/%69nfo", "/?token=x"]) | part,
                     st.just("HTTP/1.1") | st.just("HTTP/1.1") | st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x"])
                     | part)
    headers = st.lists(st.sampled_from([f"Host: 127.0.0.1:{port}", "Host: evil.example", "Origin: null",
                                        f"Origin: http://127.0.0.1:{port}", "Content-Type: application/json",
                                        "Content-Length: 12", "Content-Length: -1", "Content-Length: 99999999999",
                                        "Transfer-Encoding: chunked", "Expect: 100-continue", "Cookie: a=b;;=",
                                        "Sec-Fetch-Site: cross-site", "Connection: close"]) | part, max_size=6)
    body = st.binary(max_size=40) | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    return st.builds(lambda line, headers, body: (" ".join(line) + "\r\n" + "".join(h + "\r\n" for h in headers)
                                                  + "\r\n").encode("latin-1") + body, line, headers, body)


@PROPERTY
@given(data=st.data())
def test_arbitrary_bytes_on_the_wire_never_get_a_500(raw_server, data):
    port = raw_server.server_address[1]
    raw = data.draw(st.binary(max_size=200) | requests_of_parts(port))
    answer = exchange(raw_server, raw)
    event(f"status {status_of(answer) or 'none (HTTP/0.9)'}")
    for start in range(len(answer)):  # every answer of a pipelined exchange
        if answer.startswith(b"HTTP/1.", start) and (start == 0 or answer[start - 2:start] == b"\r\n"):
            assert answer[start + 9:start + 12] != b"500", answer
    # An HTTP/0.9 answer has no status line: the base class's error page, or the API's JSON.
    assert b"Error code: 500" not in answer and b"internal error" not in answer, answer
    still_serving(raw_server)


# --- connections ---------------------------------------------------------------------------------


def test_a_burst_of_connections_is_answered_at_once(explorer):
    """Python's listen backlog of 5 let SYNs of a burst of 20 drop: each waited a second to be resent."""
    with serving(explorer) as server:
        count, barrier, latencies = 40, threading.Barrier(40), []

        def fetch():
            barrier.wait()
            began = time.perf_counter()
            status = ask(server, "GET", "/explorer.css")[0]
            latencies.append((status, time.perf_counter() - began))

        threads = [threading.Thread(target=fetch) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert len(latencies) == count and all(status == 200 for status, _ in latencies)
    assert max(latency for _, latency in latencies) < 0.9, sorted(latency for _, latency in latencies)[-5:]


def test_an_idle_or_stalled_connection_is_closed(explorer):
    port_line = "Host: 127.0.0.1:{}\r\n"
    with serving(explorer, idle_timeout=0.3) as server:
        host = port_line.format(server.server_address[1])
        stalls = [b"", b"GET /api/info HTT", ("GET /api/info HTTP/1.1\r\n" + host).encode()]
        for sent in stalls:
            with socket.create_connection(server.server_address[:2], timeout=5) as connection:
                connection.sendall(sent)
                began = time.perf_counter()
                assert read_all(connection) == b"" and 0.2 < time.perf_counter() - began < 3, sent
        # A body that does not arrive: 408, and the connection is closed.
        with socket.create_connection(server.server_address[:2], timeout=5) as connection:
            connection.sendall(("POST /api/decode HTTP/1.1\r\n" + host + "Content-Type: application/json\r\n"
                                "Content-Length: 100\r\n\r\n{\"z\":").encode())
            answer = read_all(connection)
        assert status_of(answer) == 408 and b"Connection: close" in answer
        # A kept-alive connection, idle after its answer.
        with socket.create_connection(server.server_address[:2], timeout=5) as connection:
            connection.sendall(("GET /explorer.css HTTP/1.1\r\n" + host + "\r\n").encode())
            answer = read_all(connection)
        assert status_of(answer) == 200
        deadline = time.monotonic() + 5
        while server.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.open_connections == 0


def test_open_connections_are_bounded(explorer):
    with serving(explorer, max_connections=3, idle_timeout=10) as server:
        held = [socket.create_connection(server.server_address[:2], timeout=5) for _ in range(3)]
        try:
            request = f"GET /explorer.css HTTP/1.1\r\nHost: {authority(server)}\r\n\r\n".encode()
            for connection in held:  # each answered once and kept alive: its thread holds it
                connection.sendall(request)
                assert connection.recv(12) == b"HTTP/1.1 200"
            began = time.perf_counter()
            with socket.create_connection(server.server_address[:2], timeout=5) as extra:
                answer = read_all(extra)
            assert time.perf_counter() - began < 2
            assert answer == b"" or status_of(answer) == 503 and b"3 connections open" in answer
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + 5
        while server.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.open_connections == 0
        still_serving(server)


CHILD = textwrap.dedent("""
    import os, resource, sys
    from vaejax.explore import ExplorerServer, asset
    server = ExplorerServer("127.0.0.1", 0, idle_timeout=30)
    asset("explorer.css")  # read while descriptors are left
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads a process's CPU time from /proc")
def test_out_of_file_descriptors_the_server_waits_instead_of_spinning():
    """Connections beyond the descriptors left kept `accept` failing at once, and serve_forever spun."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    connections = []
    try:
        port = int(child.stdout.readline())
        connections = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
        time.sleep(0.3)
        before = cpu_seconds(child.pid)
        time.sleep(1.0)
        assert cpu_seconds(child.pid) - before < 0.3
        for connection in connections:
            connection.close()
        server = type("Address", (), {"server_address": ("127.0.0.1", port)})
        status, _, _ = ask(server, "GET", "/explorer.css")
        assert status == 200
    finally:
        for connection in connections:
            connection.close()
        child.kill()
        _, errors = child.communicate(timeout=10)
    # One line each time descriptors run out (the connections' ends may exhaust them again), no traceback.
    assert errors and set(errors.splitlines()) == {
        "python -m vaejax.explore: cannot accept a connection (Too many open files); retrying"}, errors


def test_a_client_that_goes_away_leaves_no_traceback(server, capfd):
    port = server.server_address[1]
    body = json.dumps({"z": [[0.1 * k, 0.0] for k in range(196)]}).encode()
    request = (f"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    for cut in (len(request), len(request) // 2, 10):
        connection = socket.create_connection(server.server_address[:2], timeout=5)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        connection.sendall(request[:cut])
        connection.close()
    time.sleep(0.3)
    still_serving(server)
    assert "Traceback" not in capfd.readouterr().err


def test_a_host_the_resolver_cannot_encode_is_one_line(tmp_path, capsys):
    assert explore.main(["--workdir", str(tmp_path), "--host", "ü" * 70, "--port", "0"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m vaejax.explore: error: cannot listen on"), lines


# --- in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    """Headless chromium that resolves evil.example to 127.0.0.1, as a DNS-rebinding page makes it do, and
    without Private Network Access (as Firefox and Safari are), which would stop another site's requests
    to 127.0.0.1 before the server could refuse them."""
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright package (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--host-resolver-rules=MAP evil.example 127.0.0.1",
            "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
            "LocalNetworkAccessChecks"])
        yield browser
        browser.close()


@pytest.fixture
def answered(monkeypatch):
    """(port, method, path, status) of every answer the explorers send, as the server sends it."""
    answers = []
    send = explore.RequestHandler.send

    def recorded(self, status, *args):
        answers.append((self.server.server_address[1], self.command, self.path, int(status)))
        send(self, status, *args)

    monkeypatch.setattr(explore.RequestHandler, "send", recorded)
    return answers


def test_in_a_browser_the_token_opens_the_page_and_other_sites_are_refused(chromium, explorer, server, answered):
    page = chromium.new_page()
    try:
        context = serving(explorer, "127.0.0.2")
        beyond = context.__enter__()
    except explore.VaejaxError:
        context = None
    if context is not None:
        try:
            page.goto(beyond.url)  # the cookie set here carries the token to the page's own requests
            page.wait_for_function("window.explorer.ready", timeout=20_000)
            box = page.locator("#marks-layer").bounding_box()
            page.mouse.move(box["x"] + 200, box["y"] + 200)
            page.wait_for_function("window.explorer.shownZ !== null")
            statuses = {(method, path, status) for at, method, path, status in answered
                        if at == beyond.server_address[1]}
            assert {status for _, _, status in statuses} == {200} and ("POST", "/api/decode", 200) in statuses
        finally:
            context.__exit__(None, None, None)
    # A DNS-rebinding page: the explorer's address under another site's name.
    port = server.server_address[1]
    answered.clear()
    page.goto(f"http://evil.example:{port}/")
    page.evaluate("path => fetch(path).catch(() => null)", "/api/info")
    rebinding = [(path, status) for at, _, path, status in answered if at == port]
    assert {status for _, status in rebinding} == {421} and ("/api/info", 421) in rebinding, rebinding
    # Another site's page posting to the explorer: without a preflight (text/plain), and with JSON.
    page.route("http://other.example/", lambda route: route.fulfill(body="<!doctype html><p>another site",
                                                                      content_type="text/html"))
    page.goto("http://other.example/")
    answered.clear()
    page.evaluate("""url => Promise.all([
        fetch(url, {method: "POST", mode: "no-cors", body: '{"z": [0, 0]}'}).catch(() => null),
        fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: '{"z": [0, 0]}'})
            .catch(() => null)])""", server.url + "api/decode")
    posted = [(method, status) for at, method, path, status in answered if at == port and path == "/api/decode"]
    assert posted and all(status in (403, 501) for _, status in posted), posted  # 501: a preflight (OPTIONS)
    assert ("POST", 403) in posted
    page.close()
