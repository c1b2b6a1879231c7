"""The dashboard over HTTP (a real ``python -m edge web`` process): refusals are 400 pages with
a reason, never a traceback; only a logged-in review with its CSRF token writes, and only a
review row; beyond loopback every page needs the password, and no password file means no start."""
from __future__ import annotations

import html
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest

from edge.outputs.store import Store
from edge.outputs.web.auth import write_password_file
from fixtures_web import WebServer, env_with_repo, free_port
from test_web_parts import det

PASSWORD = "a good password"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    d = tmp_path_factory.mktemp("web-http")
    st = Store(d / "detections.db")
    t0 = datetime(2026, 5, 1, 5, 0, tzinfo=timezone.utc)
    st.insert([det(i, t0 + timedelta(seconds=20 * i), ["Coereba_flaveola", "Vireo_latimeri"][i % 2], 0.3 + i / 100)
               for i in range(60)])
    st.close()
    write_password_file(d / "web.password", PASSWORD)
    return d


@pytest.fixture(scope="module")
def server(state):
    s = WebServer(["--db", str(state / "detections.db"), "--state-dir", str(state)])
    yield s
    s.stop()


def dump(state) -> list[str]:
    conn = sqlite3.connect(state / "detections.db")
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def login(server) -> str:
    status, headers, _ = server.get("/login", FORM, urlencode({"password": PASSWORD, "next": "/"}).encode())
    assert status == 303
    return headers["set-cookie"].split(";")[0]


def csrf_of(server, cookie: str, path: str) -> str:
    _, _, body = server.get(path, {"Cookie": cookie})
    return re.search(rb'name="csrf" value="([0-9a-f]+)"', body).group(1).decode()


@pytest.mark.parametrize("path, reason", [
    ("/?date=2026-13-01", "date must be a day"),
    ("/?date=yesterday", "date must be a day"),
    ("/?when=now", "unknown parameter 'when'"),
    ("/detections?min_score=1.5", "min_score must be between 0 and 1"),
    ("/detections?min_score=nan", "min_score must be between 0 and 1"),
    ("/detections?species=%3Cscript%3E", "species must be a species label"),
    ("/detections?review=maybe", "review must be one of none, any, correct, wrong, species"),
    ("/detections?before=2026-05-01~x", "page cursor"),
    ("/detections?before=garbage&after=x", "page cursor"),
    ("/detections?date=2026-05-01&date=2026-05-02", "more than once"),
    ("/species/Coereba_flaveola?days=9999", "days must be a whole number from 7 to 366"),
    ("/effort?days=0", "days must be a whole number from 1 to 92"),
    ("/effort?until=2026-02-30", "until must be a day"),
    ("/detections/x'%20OR%201=1", "not a detection id"),
    ("/species/x%3Cscript%3E", "not a species label"),
])
def test_bad_parameters_are_400_with_the_reason(server, path, reason):
    status, headers, body = server.get(path)
    text = html.unescape(body.decode())
    assert status == 400 and reason in text, (status, text[:500])
    assert "Traceback" not in text and "File \"" not in text
    assert headers["content-type"].startswith("text/html")


def test_pages_answer_and_never_write(server, state):
    before = dump(state)
    ids = [r[0] for r in sqlite3.connect(state / "detections.db").execute("SELECT id FROM detections LIMIT 3")]
    for path in ["/", "/?date=2026-05-01", "/detections", "/detections?species=Vireo_latimeri&min_score=0.5",
                 f"/detections/{ids[0]}", "/species", "/species/Coereba_flaveola", "/effort", "/model", "/health",
                 "/login", "/static/style.css", "/static/theme.js"]:
        status, headers, body = server.get(path)
        assert status == 200, (path, body[:300])
        assert headers.get("x-content-type-options") == "nosniff" and "frame-ancestors 'none'" in \
            headers.get("content-security-policy", "")
    assert server.get(f"/detections/{ids[0]}/clip.wav")[0] == 404  # no clips in this store: a 404 page says so
    assert server.get("/detections/00000000-dead-beef-0000-000000000000")[0] == 404
    assert server.get("/species/Nobody_here")[0] == 404
    assert server.get("/nothing-here")[0] == 404
    assert dump(state) == before


def test_a_review_needs_the_password_and_the_csrf_token_and_only_adds_a_review(server, state):
    det_id = sqlite3.connect(state / "detections.db").execute("SELECT id FROM detections LIMIT 1").fetchone()[0]
    path = f"/detections/{det_id}/review"
    form = urlencode({"verdict": "wrong"}).encode()
    before = [line for line in dump(state) if "INTO \"detections\"" in line]
    assert server.get(path, FORM, form)[0] == 403  # not logged in
    status, _, body = server.get("/login", FORM, urlencode({"password": "wrong one"}).encode())
    assert status == 401 and b"wrong password" in body
    cookie = login(server)
    assert server.get(path, {**FORM, "Cookie": cookie}, form)[0] == 403  # no token
    token = csrf_of(server, cookie, f"/detections/{det_id}")
    with_token = urlencode({"verdict": "wrong", "csrf": token}).encode()
    assert server.get(path, {**FORM, "Cookie": cookie, "Origin": "http://evil.example"}, with_token)[0] == 403
    other = login(server)  # another session's token does not fit
    assert server.get(path, {**FORM, "Cookie": other}, with_token)[0] == 403
    status, _, body = server.get(path, {**FORM, "Cookie": cookie},
                                 urlencode({"verdict": "maybe", "csrf": token}).encode())
    assert status == 400 and b"verdict must be one of" in body
    status, headers, _ = server.get(path, {**FORM, "Cookie": cookie}, with_token)
    assert status == 303 and headers["location"].endswith(f"/detections/{det_id}#review")
    conn = sqlite3.connect(state / "detections.db")
    assert conn.execute("SELECT detection_id, verdict FROM reviews").fetchall() == [(det_id, "wrong")]
    assert [line for line in dump(state) if "INTO \"detections\"" in line] == before
    _, _, page = server.get(f"/detections/{det_id}", {"Cookie": cookie})
    assert b"badge-wrong" in page
    logout = urlencode({"csrf": token}).encode()
    assert server.get("/logout", {**FORM, "Cookie": cookie}, logout)[0] == 303
    assert server.get(path, {**FORM, "Cookie": cookie}, with_token)[0] == 403  # that session is over


def test_beyond_loopback_needs_a_password_file_and_a_login(state, tmp_path):
    db = str(state / "detections.db")
    res = subprocess.run([sys.executable, "-m", "edge", "web", "--db", db, "--state-dir", str(tmp_path),
                          "--listen", f"0.0.0.0:{free_port()}"], capture_output=True, text=True, timeout=60,
                         env=env_with_repo())
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "needs a password" in res.stderr and "--set-password" in res.stderr
    s = WebServer(["--db", db, "--state-dir", str(state)], host="0.0.0.0")
    try:
        s.url = s.url.replace("0.0.0.0", "127.0.0.1")
        status, headers, _ = s.get("/detections")
        assert status == 303 and headers["location"] == "/login?next=/detections"
        assert s.get("/static/style.css")[0] == 200
        cookie = login(s)
        status, _, body = s.get("/detections", {"Cookie": cookie})
        assert status == 200 and b"Vireo" in body
    finally:
        s.stop()


def test_set_password_from_standard_input(tmp_path):
    cmd = [sys.executable, "-m", "edge", "web", "--db", str(tmp_path / "x.db"), "--state-dir", str(tmp_path),
           "--set-password"]
    res = subprocess.run(cmd, input="short\n", capture_output=True, text=True, env=env_with_repo(), timeout=60)
    assert res.returncode == 1 and "at least 8 characters" in res.stderr
    res = subprocess.run(cmd, input="long enough one\n", capture_output=True, text=True, env=env_with_repo(), timeout=60)
    assert res.returncode == 0 and (tmp_path / "web.password").read_text().startswith("scrypt$")


def test_the_daemon_service_serves_live_health_and_stops(state, tmp_path):
    """web.enabled in the daemon: its factory makes a service that serves the store and the live health
    numbers (no file in between), and stops on request; beyond loopback without a password it is left out."""
    import threading
    import urllib.request
    from types import SimpleNamespace

    from edge.config import parse_config
    from edge.outputs.web.service import service_factory
    from edge.service.health import Health

    port = free_port()
    cfg = parse_config({"state_dir": str(tmp_path), "store": {"path": str(state / "detections.db")},
                        "web": {"enabled": True, "listen": f"127.0.0.1:{port}"}})
    health = Health("live-one", tmp_path)
    health.note_device("Live USB mic", 44100)
    ctx = SimpleNamespace(cfg=cfg, health=health, services={}, stop=threading.Event())
    assert service_factory(SimpleNamespace(**{**vars(ctx), "cfg": parse_config({"store": {"path": str(state / "x.db")}})})) is None
    svc = service_factory(ctx)
    svc.start()
    try:
        body = b""
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                import time

                time.sleep(0.1)
        assert b"Live USB mic" in body and b"44100" in body
    finally:
        svc.stop()
    assert not svc.thread.is_alive()
    public = parse_config({"state_dir": str(tmp_path), "store": {"path": str(state / "detections.db")},
                           "web": {"enabled": True, "listen": f"0.0.0.0:{free_port()}"}})
    assert service_factory(SimpleNamespace(**{**vars(ctx), "cfg": public})) is None  # no password file there


def test_check_config_says_where_the_dashboard_listens_and_refuses_a_public_one_without_password(tmp_path):
    import yaml

    def check(web: dict) -> subprocess.CompletedProcess:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "web": web}))
        return subprocess.run([sys.executable, "-m", "edge", "check-config", str(cfg)], capture_output=True,
                              text=True, env=env_with_repo(), timeout=120)

    r = check({"enabled": True})
    assert r.returncode == 0 and "dashboard in the daemon on http://127.0.0.1:8080/ (this machine only)" in r.stdout
    r = check({"enabled": True, "listen": "0.0.0.0:8080"})
    assert r.returncode == 2 and "web.listen: 0.0.0.0:8080 is reachable beyond this machine" in r.stderr
    write_password_file(tmp_path / "web.password", PASSWORD)
    r = check({"enabled": True, "listen": "0.0.0.0:8080"})
    assert r.returncode == 0 and "password set" in r.stdout
