"""Hardening (issue 13): DNS rebinding and cross-site requests, protective headers, CORS, lone surrogates, the API
docs behind the password, the sign-in throttle, the API's interrupt, and HTTPS. Against running servers where
the behaviour is the server's, against the library for the rules themselves."""

import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server import ROOT, Server
from sd_app.auth import SignInThrottle
from sd_app.errors import UserError
from sd_app.params import GenerationParams
from sd_app.tls import server_tls, transport_notes
from sd_app.web_guard import WebGuard, WebPolicy, split_host

API = "/sdapi/v1"
PAGE_JOB = dict(checkpoint="homegrown-demo-base", prompt="a cat", negative_prompt="", sampler="Euler a",
                scheduler="Automatic", steps=40, width=128, height=128, cfg=7, seed=11, n_iter=1, batch=1,
                refiner="None", switch=0.8, styles=[],
                # the form's optional last fields (txt2img.EXTRA_FIELDS), then the Hires fix accordion, unchanged
                clip_skip=1, sdxl_clip_l_skip=False, tiling=False, subseed=-1, subseed_strength=0,
                seed_resize_from_w=0, seed_resize_from_h=0, hr_enable=False, hr_upscaler="Latent",
                hr_steps=0, hr_denoising=0.7, hr_scale=2.0, hr_resize_x=0, hr_resize_y=0, hr_sampler="Use same",
                hr_prompt="", hr_negative_prompt="")
STATE_CHANGING = [("interrupt", None), ("skip", None), ("refresh-checkpoints", None), ("refresh-loras", None),
                  ("options", {"samples_format": "webp"})]


def post(server, path, host=None, body=None, **headers):
    if host:
        headers["Host"] = host
    with httpx.Client(base_url=server.url, timeout=60) as c:
        return c.post(path, json=body, headers=headers) if body is not None else c.post(path, headers=headers)


# ---- DNS rebinding: the Host header -------------------------------------------------------------------


@pytest.mark.parametrize("port", [7860, None])
def test_rebound_host_name_is_refused_on_every_route(demo_server, port):
    host = f"evil.example:{port or demo_server.port}"
    origin = f"http://{host}"
    settings = demo_server.outputs.parent / "settings.json"
    before = settings.read_bytes() if settings.exists() else None
    with httpx.Client(base_url=demo_server.url, timeout=60) as c:
        headers = {"Host": host, "Origin": origin}
        r = c.post(f"{API}/options", json={"samples_format": "webp"}, headers=headers)
        assert r.status_code == 400 and "--allowed-hosts" in r.text
        r = c.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64}, headers=headers)
        assert r.status_code == 400
        for path in ("/", "/config", "/gradio_api/info", f"{API}/samplers", "/docs"):
            assert c.get(path, headers=headers).status_code == 400, path
        r = c.post("/gradio_api/call/txt2img", json={"data": list(PAGE_JOB.values())}, headers=headers)
        assert r.status_code == 400
        preflight = c.options(f"{API}/options", headers={**headers, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
        assert c.get(f"{API}/options").json()["samples_format"] != "webp"
    assert (settings.read_bytes() if settings.exists() else None) == before
    assert "refused a request for host 'evil.example:" in demo_server.log()


def test_this_machines_names_are_served(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=60) as c:
        for host in (f"127.0.0.1:{demo_server.port}", f"localhost:{demo_server.port}", f"[::1]:{demo_server.port}",
                     "LOCALHOST."):
            assert c.get(f"{API}/samplers", headers={"Host": host}).status_code == 200, host
        assert c.get(f"{API}/samplers", headers={"Host": f"192.168.1.20:{demo_server.port}"}).status_code == 400


def test_a_browser_on_a_rebound_name_gets_nothing(demo_server):
    """DNS rebinding for real: the browser resolves evil.example to 127.0.0.1, as a rebinding attacker arranges."""
    sync_playwright, chromium, flags = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=[*flags, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        page = browser.new_page()
        response = page.goto(f"http://evil.example:{demo_server.port}/")
        assert response.status == 400 and "--allowed-hosts" in page.content()
        status = page.evaluate("""fetch('/sdapi/v1/options', {method: 'POST', headers: {'Content-Type':
            'application/json'}, body: JSON.stringify({samples_format: 'webp'})}).then(r => r.status)""")
        assert status == 400
        browser.close()
    assert httpx.get(f"{demo_server.url}{API}/options").json()["samples_format"] != "webp"


def browser_or_skip():
    from test_browser import CHROMIUM, FLAGS, playwright_api  # skips when playwright or chromium is missing

    return playwright_api.sync_playwright, CHROMIUM, FLAGS


def test_host_rules():
    local = WebPolicy.from_flags(listen=False, allowed_hosts=None, cors_origins=None)
    listen = WebPolicy.from_flags(listen=True, allowed_hosts="studio.lan, .example.com", cors_origins=None)
    assert split_host("[::1]:7860") == ("::1", 7860) and split_host("LOCALHOST.:80") == ("localhost", 80)
    assert split_host("a b") is None and split_host("") is None and split_host(None) is None
    for header in ("evil.example:7860", "192.168.1.20:7860", "0x7f000001", "localhost.evil.example", "", None):
        assert not local.host_allowed(header), header
    # --listen: any address of the machine (or of its NAT); names only when listed.
    for header in ("192.168.1.20:7860", "[fe80::1]:7860", "studio.lan", "example.com", "a.b.example.com:443"):
        assert listen.host_allowed(header), header
    for header in ("evil.example:7860", "studio.lan.evil.example", "notexample.com"):
        assert not listen.host_allowed(header), header
    share = WebPolicy.from_flags(listen=False, allowed_hosts=None, cors_origins=None)
    share.allow_host("abcd1234.gradio.live")  # app.py adds the share link's host once Gradio has made it
    assert share.host_allowed("abcd1234.gradio.live") and not share.host_allowed("other.gradio.live")
    assert share.same_origin("https://abcd1234.gradio.live", "abcd1234.gradio.live")
    for bad in ("http://studio.lan", "studio.lan/x", "."):
        with pytest.raises(UserError) as err:
            WebPolicy.from_flags(listen=True, allowed_hosts=bad, cors_origins=None)
        assert err.value.field == "allowed-hosts"


def test_allowed_hosts_flag_errors_stop_the_start(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "app.py"), "--allowed-hosts", "http://studio.lan/",
                             "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "allowed-hosts: 'http://studio.lan/' is not a host name" in result.stderr


# ---- cross-site requests, CORS and headers ------------------------------------------------------------


@pytest.mark.parametrize("route, body", STATE_CHANGING)
def test_state_changing_calls_refuse_cross_site_requests(demo_server, route, body):
    for headers in ({"Origin": "https://evil.example"}, {"Origin": f"http://localhost:{demo_server.port + 1}"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        r = post(demo_server, f"{API}/{route}", body=body, **headers)
        assert r.status_code == 403 and r.json()["error"] == "CrossSiteRequest", (headers, r.text)
    assert httpx.get(f"{demo_server.url}{API}/options").json()["samples_format"] != "webp"
    if route != "options":  # the page itself (same origin) and scripts (no Origin) still get through
        assert post(demo_server, f"{API}/{route}", Origin=demo_server.url).status_code == 200
        assert post(demo_server, f"{API}/{route}", **{"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert post(demo_server, f"{API}/{route}").status_code == 200


def test_gradio_routes_refuse_cross_site_posts(demo_server):
    r = post(demo_server, "/gradio_api/call/txt2img", body={"data": list(PAGE_JOB.values())},
             Origin="https://evil.example")
    assert r.status_code == 403


def test_protective_headers_on_the_page_and_the_api(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=60) as c:
        for path in ("/", f"{API}/samplers", "/gradio_api/info", "/no-such-page"):
            h = c.get(path).headers
            assert h["x-content-type-options"] == "nosniff", path
            assert h["referrer-policy"] == "no-referrer", path
            assert h["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in h["content-security-policy"], path


def test_cors_only_for_origins_the_user_allows(demo_server):
    """Gradio alone answers any http://localhost:* origin with credentials; now no origin is allowed by default."""
    with httpx.Client(base_url=demo_server.url, timeout=60) as c:
        for origin in ("http://localhost:3000", "https://evil.example", "null"):
            r = c.get(f"{API}/samplers", headers={"Origin": origin})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers, origin
            assert "access-control-allow-credentials" not in r.headers
            pre = c.options(f"{API}/txt2img", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type"})
            assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers


def test_colab_may_frame_the_page_and_proxy_it():
    colab = WebPolicy.from_flags(listen=False, allowed_hosts=None, cors_origins=None, colab=True)
    frame = dict(colab.protective_headers())
    assert "x-frame-options" not in frame
    assert frame["content-security-policy"].startswith("frame-ancestors 'self' https://colab.research.google.com")
    assert colab.host_allowed("7860-m-s-abc.prod.colab.dev") and not colab.host_allowed("evil.example")
    assert colab.trusted("https://7860-m-s-abc.prod.colab.dev", "localhost:7860")
    assert not colab.trusted("http://7860-m-s-abc.prod.colab.dev", "localhost:7860")
    assert "x-frame-options" in dict(WebPolicy().protective_headers())


def test_guard_replaces_inner_cors_answers_and_closes_foreign_websockets():
    async def inner(scope, receive, send):  # answers like Gradio's CORS middleware does for a LAN Host
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"access-control-allow-origin", b"https://evil.example"),
                                (b"access-control-allow-credentials", b"true")]})
        await send({"type": "http.response.body", "body": b"ok"})

    policy = WebPolicy.from_flags(listen=True, allowed_hosts=None, cors_origins="https://tools.example.com")
    client = TestClient(WebGuard(policy).wrap(inner), base_url="http://192.168.1.20:7860")
    r = client.get("/", headers={"Origin": "https://evil.example"})
    assert r.text == "ok" and "access-control-allow-origin" not in r.headers
    r = client.get("/", headers={"Origin": "https://tools.example.com"})
    assert r.headers["access-control-allow-origin"] == "https://tools.example.com"
    with client.websocket_connect("ws://192.168.1.20:7860/ws", headers={"Origin": "http://192.168.1.20:7860"}):
        pass
    for url, headers in (("ws://192.168.1.20:7860/ws", {"Origin": "https://evil.example"}),
                         ("ws://evil.example:7860/ws", {})):
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(url, headers=headers):
                pass


# ---- smaller items ------------------------------------------------------------------------------------


def test_lone_surrogate_in_a_prompt_is_a_422(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=60) as c:
        for field, raw in (("prompt", '"prompt": "a \\ud800 cat"'), ("negative_prompt", '"negative_prompt": "\\ud800"'),
                           ("styles", '"styles": ["\\ud800"]')):
            r = c.post(f"{API}/txt2img", content='{' + raw + ', "steps": 2, "width": 64, "height": 64}',
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["field"] == field and "surrogate" in r.json()["detail"]
            assert "internal error" not in r.text
        r = c.post(f"{API}/options", content='{"sd_model_checkpoint": "\\ud800"}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "sd_model_checkpoint" in r.json()["detail"]
        # The page's own endpoint: a message naming the field, not a crash.
        data = json.dumps({"data": list({**PAGE_JOB, "steps": 2, "prompt": "a \ud800 cat"}.values())})
        event = c.post("/gradio_api/call/txt2img", content=data, headers={"Content-Type": "application/json"})
        stream = c.get(f"/gradio_api/call/txt2img/{event.json()['event_id']}").text
        assert "event: error" in stream and "prompt: contains '\\\\ud800'" in stream
    assert demo_server.alive()
    with pytest.raises(UserError) as err:
        GenerationParams(prompt="a \ud800 cat").check()
    assert err.value.field == "prompt" and "surrogate" in err.value.message


def test_api_docs_need_the_password(auth_server):
    with httpx.Client(base_url=auth_server.url, timeout=60) as c:
        for path in (f"{API}/docs", f"{API}/redoc", f"{API}/openapi.json"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, auth=("alice", "wonderland")).status_code == 200, path
        schema = c.get(f"{API}/openapi.json", auth=("alice", "wonderland")).json()
        assert "/txt2img" in schema["paths"] and schema["servers"] == [{"url": API}]
        assert "/sdapi/v1/openapi.json" in c.get(f"{API}/docs", auth=("alice", "wonderland")).text
        assert c.get("/openapi.json").status_code == 404  # Gradio's own schema is not served at all
        assert c.get("/docs", follow_redirects=True).status_code == 401


def test_api_interrupt_stops_the_running_page_job(demo_server):
    """A1111 clients expect /interrupt to stop whatever runs; the page's button stays per user (test_app)."""
    from test_app import wait_until_sampling

    job = Client(demo_server.url, verbose=False).submit(*PAGE_JOB.values(), api_name="/txt2img")
    wait_until_sampling(demo_server)
    assert post(demo_server, f"{API}/interrupt").status_code == 200
    assert "interrupted" in job.result(timeout=120)[0]


def test_throttle_slows_down_then_locks_out():
    now, lines = [0.0], []
    throttle = SignInThrottle(clock=lambda: now[0], log=lines.append)
    waits = []
    for _ in range(20):
        now[0] += waits[-1] if waits else 0  # each guess as soon as it is allowed
        assert throttle.begin("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
        waits.append(throttle.wait("1.2.3.4"))
    assert waits[:4] == [0, 0, 0, 0] and waits[4:11] == [1, 2, 4, 8, 16, 32, 60] and waits[18] == 60
    assert waits[19] == 15 * 60 and lines == ["sign-in: 20 failed attempts from 1.2.3.4: refused for 15 minutes"]
    assert throttle.begin("1.2.3.4") == 15 * 60  # even the right password is not checked now
    assert throttle.begin("5.6.7.8") == 0  # per client
    now[0] += 15 * 60
    assert throttle.begin("1.2.3.4") == 0
    throttle.succeeded("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 0


def test_throttle_takes_one_attempt_at_a_time_after_a_failure():
    throttle = SignInThrottle(clock=lambda: 0.0)
    assert throttle.begin("c") == 0 and throttle.begin("c") == 0  # no failure yet: parallel requests are fine
    throttle.failed("c")
    throttle.succeeded("c")
    throttle.begin("c")
    throttle.failed("c")
    assert throttle.begin("c") == 0 and throttle.begin("c") > 0  # a guesser cannot fire many at once


# ---- HTTPS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, demo_root):
    """`python app.py --demo --tls-self-signed --auth ...` on 127.0.0.1, with an allowed name and CORS origin."""
    data = tmp_path_factory.mktemp("tls-server")
    shutil.copytree(demo_root, data / "demo")
    server = Server(data, "--demo", "--tls-self-signed", "--auth", "alice:wonderland", "--allowed-hosts",
                    "studio.lan", "--cors-allow-origins", "http://localhost:3000")
    server.url = server.url.replace("http://", "https://")
    server.cert = data / "tls" / "self-signed-cert.pem"
    server.start()
    yield server
    server.stop()


def https(server, **kw):
    return httpx.Client(base_url=server.url, timeout=60, verify=ssl.create_default_context(cafile=server.cert),
                        auth=("alice", "wonderland"), **kw)


def test_self_signed_https_serves_the_page_and_the_api(tls_server):
    from sd_app.tls import fingerprint

    assert f"SHA-256 fingerprint {fingerprint(tls_server.cert)}" in tls_server.log()
    assert "https://127.0.0.1:" in tls_server.log() and "unencrypted" not in tls_server.log()
    with https(tls_server) as c:  # the certificate verifies for the address the browser uses
        assert c.get("/").status_code == 200
        r = c.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert r.status_code == 200 and len(r.json()["images"]) == 1
    with pytest.raises(httpx.HTTPError):  # nothing is served in clear on that port
        httpx.get(tls_server.url.replace("https://", "http://") + f"{API}/samplers", timeout=10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_server.url}{API}/samplers", timeout=10)  # not trusted without the kept certificate


def test_allowed_hosts_and_cors_origins_flags(tls_server):
    with https(tls_server) as c:
        assert c.get(f"{API}/samplers", headers={"Host": "studio.lan"}).status_code == 200
        assert c.get(f"{API}/samplers", headers={"Host": "studio.lan.evil.example"}).status_code == 400
        r = c.get(f"{API}/samplers", headers={"Origin": "http://localhost:3000"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert r.headers["access-control-allow-credentials"] == "true"
        pre = c.options(f"{API}/interrupt", headers={"Origin": "http://localhost:3000",
                                                     "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert c.post(f"{API}/interrupt", headers={"Origin": "http://localhost:3000"}).status_code == 200
        assert c.post(f"{API}/interrupt", headers={"Origin": "http://localhost:3001"}).status_code == 403
        origin = tls_server.url.rstrip("/")
        assert c.post(f"{API}/interrupt", headers={"Origin": origin}).status_code == 200  # the page itself


def test_a_browser_signs_in_over_https(tls_server):
    sync_playwright, chromium, flags = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_context(ignore_https_errors=True).new_page()  # the self-signed warning, accepted
        page.goto(tls_server.url)
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wonderland")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#generate", timeout=60_000)
        browser.close()


def test_sign_in_guessing_is_slowed_down(tls_server):
    """Runs last on its server: five wrong passwords, then even the right one waits; after the wait it works."""
    with https(tls_server) as c:
        for i in range(5):
            assert c.post("/login", data={"username": "alice", "password": f"guess{i}"}).status_code == 400
        r = c.post("/login", data={"username": "alice", "password": "wonderland"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        api = c.get(f"{API}/samplers")
        assert api.status_code == 429 and "too many failed sign-ins" in api.json()["detail"]
        time.sleep(1.2)
        r = c.post("/login", data={"username": "alice", "password": "wonderland"})
        assert r.status_code == 200 and r.json() == {"success": True}
        assert c.get(f"{API}/samplers").status_code == 200
    with https(tls_server) as c:  # the API's Basic auth counts on the same throttle
        c.auth = ("alice", "nope")
        codes = [c.get(f"{API}/samplers").status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        time.sleep(1.2)
        c.auth = ("alice", "wonderland")
        assert c.get(f"{API}/samplers").status_code == 200


def test_self_signed_certificate_is_kept_and_checked(tmp_path):
    names = ["localhost", "127.0.0.1", "::1"]
    first = server_tls(None, None, True, tmp_path, names)
    key = Path(first.keyfile)
    if os.name == "posix":
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    mtime = key.stat().st_mtime_ns
    again = server_tls(None, None, True, tmp_path, names)
    assert again.fingerprint == first.fingerprint and key.stat().st_mtime_ns == mtime  # kept, not made again
    wider = server_tls(None, None, True, tmp_path, [*names, "studio.lan"])
    assert wider.fingerprint != first.fingerprint  # a name it lacked: made again
    own = server_tls(wider.certfile, wider.keyfile, False, tmp_path / "unused", names)
    assert own.fingerprint == wider.fingerprint and not own.self_signed
    other = server_tls(None, None, True, tmp_path / "other", names)
    for args, field in (((wider.certfile, None, False), "tls-keyfile"), ((None, wider.keyfile, False), "tls-certfile"),
                        ((wider.certfile, wider.keyfile, True), "tls-self-signed"),
                        ((wider.certfile, other.keyfile, False), "tls-certfile"),
                        ((str(tmp_path / "missing.pem"), wider.keyfile, False), "tls-certfile")):
        with pytest.raises(UserError) as err:
            server_tls(*args, tmp_path, names)
        assert err.value.field == field, args
    with pytest.raises(UserError) as err:
        server_tls(None, None, True, tmp_path, names, share=True)
    assert err.value.field == "share" and "already HTTPS" in err.value.message


def test_start_up_says_whether_traffic_is_encrypted():
    warning = " ".join(transport_notes(listen=True, share=False, tls=None, port=7860))
    assert "unencrypted" in warning and "--tls-self-signed" in warning and "ssh -L 7860:localhost:7860" in warning
    assert transport_notes(listen=False, share=False, tls=None, port=7860) == []
    assert transport_notes(listen=False, share=True, tls=None, port=7860) == [
        "The public share link is HTTPS: the browser's traffic to it is encrypted."]


def test_share_with_tls_is_refused_at_start(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "app.py"), "--share", "--tls-self-signed",
                             "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--share cannot be combined with --tls-*" in result.stderr
