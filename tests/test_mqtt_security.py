"""TLS, passwords and the example ACL, against a real mosquitto."""
from __future__ import annotations

import logging
import shutil
import signal

import pytest

from edge.outputs.mqtt.client import MQTTSetupError
from edge.outputs.mqtt.publisher import Publisher
from edge.outputs.store import Store
from fixtures_mqtt import REPO, make_password_file, make_test_ca, wait_until
from mqtt_helpers import make_detections, mqtt_config, start_publisher, validate, store_then_publish

DET = "dawnchorus/dev1/detections"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("ca"), "dev1")


def test_tls_with_password_and_client_certificate(tmp_path, test_ca, make_broker, make_collector, monkeypatch):
    pw = make_password_file(tmp_path / "passwd", {"dev1": "s3cret-dev1", "home": "home-pw"})
    broker = make_broker(tls={"ca": test_ca / "ca.crt", "cert": test_ca / "server.crt", "key": test_ca / "server.key",
                              "require_certificate": True},
                         password_file=pw)
    # on this broker every client needs a certificate: the consumer too
    col = make_collector(broker, [DET], username="home", password="home-pw", tls_ca=test_ca / "ca.crt",
                         tls_cert=(test_ca / "dev1.crt", test_ca / "dev1.key"))
    col.wait_subscribed()
    monkeypatch.setenv("DAWNCHORUS_MQTT_PASSWORD", "s3cret-dev1")
    store = Store(tmp_path / "d.db")
    pub = start_publisher(broker, store, username="dev1", password_env="DAWNCHORUS_MQTT_PASSWORD",
                          tls={"ca_file": test_ca / "ca.crt", "cert_file": test_ca / "dev1.crt",
                               "key_file": test_ca / "dev1.key"})
    try:
        assert pub.wait_connected(15), broker.log_text()
        store_then_publish(store, pub, make_detections(10))
        assert col.wait_for(lambda c: len(c.on(DET)) >= 10, 15)
        assert {validate("detection", p)["id"] for p in col.on(DET)} == {d.id for d in make_detections(10)}
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
    finally:
        pub.stop()


def test_wrong_password_clear_log_no_crash_storage_goes_on(tmp_path, test_ca, make_broker, make_collector, caplog):
    pw = make_password_file(tmp_path / "passwd", {"dev1": "right-password", "home": "home-pw"})
    broker = make_broker(tls={"ca": test_ca / "ca.crt", "cert": test_ca / "server.crt", "key": test_ca / "server.key"},
                         password_file=pw)
    secret = tmp_path / "mqtt.password"
    secret.write_text("wrong-password\n")
    store = Store(tmp_path / "d.db")
    with caplog.at_level(logging.DEBUG):
        pub = start_publisher(broker, store, username="dev1", password_file=secret,
                              tls={"ca_file": test_ca / "ca.crt"})
        try:
            sink = lambda dets: store_then_publish(store, pub, dets)  # noqa: E731
            assert wait_until(lambda: any("refused the connection" in r.getMessage() for r in caplog.records), 10)
            refused = [r for r in caplog.records if "refused the connection" in r.getMessage()][0]
            assert refused.levelno == logging.ERROR
            assert "reason code 134" in refused.getMessage() or "reason code 135" in refused.getMessage()
            assert "user dev1" in refused.getMessage()
            # storage goes on while the broker refuses us
            sink(make_detections(20))
            assert store.outbox_depth() == 20 and not pub.connected
            assert pub._thread.is_alive()
            # the operator fixes the broker's password file; the retries get through
            make_password_file(pw, {"dev1": "wrong-password"})
            broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its password file
            assert pub.wait_connected(20), broker.log_text()
            assert wait_until(lambda: store.outbox_depth() == 0, 20)
        finally:
            pub.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "wrong-password" not in text and "right-password" not in text


def test_unreadable_password_file_is_a_clear_error(tmp_path, mqtt_broker):
    cfg = mqtt_config(mqtt_broker, username="dev1", password_file=tmp_path / "missing")
    with pytest.raises(MQTTSetupError, match="password_file .*missing"):
        Publisher(cfg, "dev1", Store(tmp_path / "d.db"))
    cfg = mqtt_config(mqtt_broker, username="dev1", password_env="DAWNCHORUS_NO_SUCH_VAR")
    with pytest.raises(MQTTSetupError, match="DAWNCHORUS_NO_SUCH_VAR"):
        Publisher(cfg, "dev1", Store(tmp_path / "d.db"))


def test_example_acl_device_writes_only_its_own_topics(tmp_path, make_broker, make_collector, caplog):
    acl = tmp_path / "dawnchorus.acl"
    shutil.copy(REPO / "deploy" / "mosquitto" / "dawnchorus.acl", acl)
    pw = make_password_file(tmp_path / "passwd", {"dev1": "pw1", "dev2": "pw2", "home": "pwh"})
    broker = make_broker(password_file=pw, acl_file=acl)
    col = make_collector(broker, ["dawnchorus/#"], username="home", password="pwh")
    col.wait_subscribed()
    pwfile = tmp_path / "pw1"
    pwfile.write_text("pw1")
    good = Store(tmp_path / "good.db")
    bad = Store(tmp_path / "bad.db")
    # dev1 logs in correctly, and also tries to publish as if it were dev2
    p1 = start_publisher(broker, good, "dev1", username="dev1", password_file=pwfile, protocol="5")
    p2 = start_publisher(broker, bad, "dev2", username="dev1", password_file=pwfile, protocol="5")
    try:
        assert p1.wait_connected(10) and p2.wait_connected(10)
        store_then_publish(good, p1, make_detections(5, "dev1"))
        store_then_publish(bad, p2, make_detections(5, "dev2"))
        assert col.wait_for(lambda c: len(c.ids(DET)) == 5, 10)
        assert wait_until(lambda: good.outbox_depth() == 0, 10)
        # MQTT 5: the broker answers "not authorized" (and mosquitto drops the connection):
        # a clear error, nothing marked published, nothing arrives
        assert wait_until(lambda: any("refused" in r.getMessage() and "dawnchorus/dev2/" in r.getMessage()
                                      and r.levelno == logging.ERROR for r in caplog.records), 10)
        assert bad.outbox_depth() == 5
        assert not col.on("dawnchorus/dev2/detections")
    finally:
        p1.stop()
        p2.stop()
