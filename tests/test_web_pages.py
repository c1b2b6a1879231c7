"""The dashboard in a real browser: headless Chromium loads every page against a store filled
by a real replay of the demo recording (clips on) and checks what a person sees: the species
names, a spectrogram image that decodes, a clip that plays as audio/wav, the review round trip
(mark in the browser, export, the trainer's loader reads it). Screenshots: test-artifacts/web/."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import zipfile

import pytest

from fixtures_web import CHROMIUM, Browser, WebServer, env_with_repo, replay_demo

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (./dev.sh test installs it)")
PASSWORD = "dawn-chorus-test"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    state = tmp_path_factory.mktemp("web-state")
    cfg = replay_demo(state)
    db = sqlite3.connect(state / "detections.db")
    n = db.execute("SELECT count(*) FROM detections").fetchone()[0]
    assert n >= 10 and len(list((state / "clips").rglob("*.wav"))) == n  # the replay kept a clip of each
    db.close()
    cfg.write_text(cfg.read_text() + "web:\n  page_size: 10\n")
    subprocess.run([sys.executable, "-m", "edge", "web", "--config", str(cfg), "--set-password"], input=PASSWORD + "\n",
                   text=True, check=True, env=env_with_repo(), capture_output=True)
    from edge.service.health import Health
    from edge.outputs.healthfile import HealthFile

    h = Health("recorder", state)
    h.note_device("USB mic (test)", 48000)
    h.note_audio(32000 * 60, 32000)
    h.note_windows(39, 0.004)
    HealthFile(state / "health.json", h.snapshot).write_now()
    server = WebServer(["--config", str(cfg)])
    browser = Browser()
    db = sqlite3.connect(state / "detections.db")
    db.row_factory = sqlite3.Row
    yield {"state": state, "cfg": cfg, "server": server, "browser": browser, "db": db}
    browser.close()
    server.stop()
    db.close()


def rows(site, sql, params=()):
    return [dict(r) for r in site["db"].execute(sql, params)]


def no_horizontal_scroll(b) -> bool:
    return b.js("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_today_lists_every_species_heard(site):
    b, url = site["browser"], site["server"].url
    species = rows(site, "SELECT common_name, count(*) AS n FROM detections GROUP BY label")
    assert len(species) >= 3
    b.goto(url + "/")
    text = b.text()
    assert "last day with detections" in text  # the demo is from 2016: today is empty, the page says so
    for s in species:
        assert s["common_name"] in text
    assert b.js("document.querySelectorAll('table.species-table tbody tr').length") == len(species)
    assert b.js("document.querySelectorAll('svg.spark').length") == len(species)
    b.screenshot("today")
    b.resize(390, 844, mobile=True)
    try:
        b.goto(url + "/")
        assert no_horizontal_scroll(b)
        b.screenshot("today-mobile")
    finally:
        b.resize(1200, 900)


def test_detections_filter_and_pages(site):
    b, url = site["browser"], site["server"].url
    top = rows(site, "SELECT label, common_name, count(*) AS n FROM detections GROUP BY label ORDER BY n DESC LIMIT 1")[0]
    b.goto(f"{url}/detections?species={top['label']}")
    names = b.js("[...document.querySelectorAll('table.det-table tbody tr td:nth-child(2) .common')].map(e => e.textContent)")
    assert names == [top["common_name"]] * min(top["n"], 10)
    total = rows(site, "SELECT count(*) AS n FROM detections")[0]["n"]
    seen, link = 0, f"{url}/detections"
    for _ in range(20):  # follow "older" links to the end: every detection once
        b.goto(link)
        seen += b.js("document.querySelectorAll('table.det-table tbody tr').length")
        link = b.js("[...document.querySelectorAll('nav.pager a')].find(a => a.textContent.includes('older'))?.href || ''")
        if not link:
            break
    assert seen == total
    b.goto(f"{url}/detections?min_score=0.9")
    scores = b.js("[...document.querySelectorAll('table.det-table tbody td.num:nth-child(3)')].map(e => parseFloat(e.textContent))")
    assert scores and all(s >= 0.9 for s in scores)
    b.screenshot("detections")


def test_detection_spectrogram_decodes_and_clip_plays(site):
    b, url = site["browser"], site["server"].url
    det = rows(site, "SELECT * FROM detections ORDER BY score DESC LIMIT 1")[0]
    b.goto(f"{url}/detections/{det['id']}")
    assert det["common_name"] in b.text()
    w, h = b.js("(async () => { const i = document.querySelector('img.spectrogram'); await i.decode();"
                " return [i.naturalWidth, i.naturalHeight]; })()")
    assert w > 100 and h == 256  # 128 mel bands, 2 px each
    assert b.js("document.querySelector('svg.span rect').width.baseVal.value") > 0  # the event's box on it
    ctype = b.js("fetch(document.querySelector('img.spectrogram').src).then(r => r.headers.get('content-type'))")
    assert ctype == "image/png"
    duration = b.js("new Promise((ok, bad) => { const a = document.querySelector('audio');"
                    " if (a.readyState >= 1) ok(a.duration); a.onloadedmetadata = () => ok(a.duration);"
                    " a.onerror = () => bad(new Error('audio error ' + a.error.code)); a.load(); })")
    eff = rows(site, "SELECT start_utc, end_utc FROM effort")[0]
    from edge.outputs.web.queries import parse_utc

    total = (parse_utc(eff["end_utc"]) - parse_utc(eff["start_utc"])).total_seconds()
    expected = min(det["end_offset_s"] + 1, total) - max(det["offset_s"] - 1, 0)  # 1 s padding, within the file
    assert abs(duration - expected) < 0.05
    played = b.js("new Promise(ok => { const a = document.querySelector('audio'); a.muted = true; a.play();"
                  " const t0 = Date.now(); (function poll() { if (a.currentTime > 0.2 || Date.now() - t0 > 5000)"
                  " { a.pause(); ok(a.currentTime); } else setTimeout(poll, 50); })(); })")
    assert played > 0.2
    assert b.js("fetch(document.querySelector('audio').src).then(r => r.headers.get('content-type'))") == "audio/wav"
    b.screenshot("detection")
    # the spectrogram was drawn in a child: the dashboard itself never loads numpy (its memory budget)
    maps = open(f"/proc/{site['server'].proc.pid}/maps").read()
    assert "numpy" not in maps and "pydantic_core" in maps  # (--config: the configuration is read)


def test_species_effort_model_health_pages(site):
    b, url = site["browser"], site["server"].url
    top = rows(site, "SELECT label, common_name FROM detections GROUP BY label ORDER BY count(*) DESC LIMIT 1")[0]
    b.goto(f"{url}/species/{top['label']}")
    assert top["common_name"] in b.text()
    assert b.js("document.querySelectorAll('svg.chart').length") == 2
    assert b.js("document.querySelectorAll('svg.chart rect.bar').length") >= 2
    b.screenshot("species")
    b.goto(f"{url}/species")
    assert top["common_name"] in b.text()
    b.goto(f"{url}/effort")
    assert b.js("document.querySelectorAll('svg.timeline rect.seg-on').length") >= 1
    b.screenshot("effort")
    from edge.config import DEFAULT_BUNDLE

    manifest = json.loads(zipfile.ZipFile(DEFAULT_BUNDLE).read("manifest.json"))
    b.goto(f"{url}/model")
    text = b.text()
    assert manifest["version"] in text and "macro roc auc" in text.lower()
    assert b.js("document.querySelectorAll('svg.chart rect.bar').length") == len(manifest["labels"])
    b.screenshot("model")
    b.goto(f"{url}/health")
    text = b.text()
    assert "USB mic (test)" in text and "outbox depth" in text.lower()
    b.screenshot("health")
    b.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
    try:
        b.goto(f"{url}/")
        bg = b.js("getComputedStyle(document.body).backgroundColor")
        assert sum(int(v) for v in bg[bg.index("(") + 1:-1].split(",")[:3]) < 150, bg
        b.screenshot("today-dark")
        b.js("document.getElementById('theme').click()")  # the person's choice wins, and is kept
        assert b.js("document.documentElement.dataset.theme") == "light"
        b.goto(f"{url}/health")
        assert b.js("document.documentElement.dataset.theme") == "light"
        b.js("localStorage.removeItem('dawnchorus-theme')")
    finally:
        b.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])


def test_review_in_the_browser_then_export_reads_in_the_trainer(site, tmp_path):
    b, url = site["browser"], site["server"].url
    before = rows(site, "SELECT * FROM detections ORDER BY seq")
    by_label: dict[str, list[dict]] = {}
    for d in before:
        by_label.setdefault(d["label"], []).append(d)
    (a_label, a), (b_label, bb) = sorted(by_label.items(), key=lambda kv: -len(kv[1]))[:2]
    b.goto(f"{url}/detections/{a[0]['id']}")
    assert b.js("document.querySelector('#review form') === null")  # not logged in: no review form
    b.goto(f"{url}/login?next=/detections/{a[0]['id']}")
    b.js(f"document.querySelector('input[name=password]').value = {json.dumps(PASSWORD)};"
         " document.querySelector('form.stack').submit()")
    b.wait_event("Page.loadEventFired")

    def click(det_id: str, verdict: str, label: str | None = None) -> None:
        b.goto(f"{url}/detections/{det_id}")
        if label:
            b.js(f"document.querySelector('#review select[name=label]').value = {json.dumps(label)}")
        b.js(f"document.querySelector('#review button[value={verdict}]').click()")
        b.wait_event("Page.loadEventFired")

    click(a[0]["id"], "correct")
    assert "correct" in b.js("document.querySelector('#review').innerText")
    click(a[1]["id"], "correct")
    click(bb[0]["id"], "species", a_label)  # "it was the other one"
    click(a[2]["id"], "wrong")
    click(bb[1]["id"], "correct")
    b.screenshot("review")
    b.goto(f"{url}/detections?review=any")  # the list of what was reviewed, and of what is left
    shown = b.js("[...document.querySelectorAll('table.det-table tbody a')].map(a => a.href.split('/').pop())")
    assert sorted(shown) == sorted([a[0]["id"], a[1]["id"], a[2]["id"], bb[0]["id"], bb[1]["id"]])
    b.goto(f"{url}/detections?review=wrong")
    assert b.js("[...document.querySelectorAll('table.det-table tbody a')].map(a => a.href.split('/').pop())") == [a[2]["id"]]
    assert rows(site, "SELECT * FROM detections ORDER BY seq") == before  # reviews never change a detection
    assert len(rows(site, "SELECT * FROM reviews")) == 5

    out = tmp_path / "reviewed"
    res = subprocess.run([sys.executable, "-m", "edge", "export-reviews", str(out), "--config", str(site["cfg"])],
                         capture_output=True, text=True, env=env_with_repo(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "exported 5 reviewed clip(s)" in res.stdout

    from edge.contract.frontend import FrontendParams
    from trainer.data import FrameCache, read_dataset

    ds = read_dataset(out)
    assert sorted(ds.classes) == sorted([a_label, b_label])
    got = sorted((r.label, r.path.stem) for r in ds.recordings)
    assert got == sorted([(a_label, a[0]["id"]), (a_label, a[1]["id"]), (a_label, bb[0]["id"]),
                          (b_label, bb[1]["id"])])
    assert (out / ".wrong" / a_label / f"{a[2]['id']}.wav").is_file()
    frames = FrameCache(FrontendParams(), tmp_path / "cache").load(ds)
    assert len(frames) == 4 and all(f.shape[1] == 128 and f.shape[0] > 100 for f in frames.values())
