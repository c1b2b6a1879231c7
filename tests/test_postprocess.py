"""Post-processing on synthetic score sequences: thresholds, species lists, merging, stable ids."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge.config import DetectionConfig, parse_config
from edge.detection.postprocess import ModelInfo, PostProcessor, SourceInfo, resolve_thresholds

LABELS = ["Aa_one", "Bb_two", "Cc_three"]
T0 = datetime(2024, 5, 1, 5, 30, tzinfo=timezone.utc)
HOP = 1.5


def model(thresholds=None, sha="a" * 64, version="1.0"):
    return ModelInfo(LABELS, ["One", "Two", "Three"], thresholds or {"Aa_one": 0.5, "Bb_two": 0.7, "Cc_three": 0.3},
                     version, sha, 3.0)


def run(scores, detection=None, m=None, time_source="file-name", source="/rec/a.wav", device="dev1"):
    pp = PostProcessor(m or model(), SourceInfo(device, source, time_source), detection,
                       clock=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
    out = []
    for i, row in enumerate(np.asarray(scores, dtype=np.float32)):
        out += pp.add(i, i * HOP, T0 + timedelta(seconds=i * HOP), row)
    return out + pp.close()


def col(values, k=0):
    """Score rows with ``values`` in column k and zeros elsewhere."""
    s = np.zeros((len(values), len(LABELS)), np.float32)
    s[:, k] = values
    return s


def test_bundle_thresholds_per_class():
    s = np.array([[0.6, 0.6, 0.2]])  # Aa over 0.5; Bb under its 0.7; Cc under 0.3
    assert [d.label for d in run(s)] == ["Aa_one"]
    s = np.array([[0.4, 0.75, 0.31]])
    assert sorted(d.label for d in run(s)) == ["Bb_two", "Cc_three"]


def test_config_overrides_thresholds():
    s = np.array([[0.6, 0.6, 0.35]])
    det = DetectionConfig(thresholds={"Aa_one": 0.65, "Bb_two": 0.55})
    assert sorted(d.label for d in run(s, det)) == ["Bb_two", "Cc_three"]
    det = DetectionConfig(default_threshold=0.59)
    assert sorted(d.label for d in run(s, det)) == ["Aa_one", "Bb_two"]
    det = DetectionConfig(default_threshold=0.59, thresholds={"Bb_two": 0.9})
    assert [d.label for d in run(s, det)] == ["Aa_one"]
    th = resolve_thresholds(LABELS, {"Aa_one": 0.2}, None)
    assert th.tolist() == pytest.approx([0.2, 0.5, 0.5])  # unknown to the bundle: 0.5


def test_include_and_exclude():
    s = np.array([[0.9, 0.9, 0.9]])
    assert [d.label for d in run(s, DetectionConfig(include=["Bb_two"]))] == ["Bb_two"]
    assert sorted(d.label for d in run(s, DetectionConfig(exclude=["Bb_two"]))) == ["Aa_one", "Cc_three"]
    assert run(s, DetectionConfig(include=["Bb_two"], exclude=["Bb_two"])) == []


def test_consecutive_windows_merge_into_one_event():
    dets = run(col([0.1, 0.6, 0.9, 0.7, 0.1, 0.1, 0.8, 0.1]))
    assert [(d.offset_s, d.end_offset_s, d.n_windows) for d in dets] == [(1.5, 7.5, 3), (9.0, 12.0, 1)]
    first = dets[0]
    assert first.score == pytest.approx(0.9)
    assert first.mean_score == pytest.approx((0.6 + 0.9 + 0.7) / 3, abs=1e-4)
    assert first.start_utc == "2024-05-01T05:30:01.500Z" and first.end_utc == "2024-05-01T05:30:07.500Z"
    assert first.time_source == "file-name" and first.common_name == "One"


def test_merge_gap_bridges_quiet_windows():
    s = col([0.9, 0.1, 0.8, 0.1, 0.1, 0.7])
    assert [d.n_windows for d in run(s)] == [1, 1, 1]
    dets = run(s, DetectionConfig(merge_gap_windows=1))
    assert [(d.offset_s, d.end_offset_s, d.n_windows) for d in dets] == [(0.0, 6.0, 2), (7.5, 10.5, 1)]
    dets = run(s, DetectionConfig(merge_gap_windows=2))
    assert [(d.offset_s, d.end_offset_s, d.n_windows) for d in dets] == [(0.0, 10.5, 3)]
    assert dets[0].mean_score == pytest.approx(0.8, abs=1e-4)


def test_min_windows_drops_short_events():
    s = col([0.9, 0.1, 0.8, 0.8, 0.1, 0.9, 0.9, 0.9])
    dets = run(s, DetectionConfig(min_windows=2))
    assert [(d.offset_s, d.n_windows) for d in dets] == [(3.0, 2), (7.5, 3)]
    assert run(s, DetectionConfig(min_windows=4)) == []


def test_species_are_independent():
    s = np.zeros((4, 3), np.float32)
    s[0:2, 0] = 0.9
    s[1:4, 2] = 0.5
    dets = run(s)
    assert [(d.label, d.offset_s, d.n_windows) for d in dets] == [("Aa_one", 0.0, 2), ("Cc_three", 1.5, 3)]


def test_ids_are_stable_and_distinguish_what_matters():
    s = col([0.9, 0.9, 0.1, 0.9])
    a, b = run(s), run(s)
    assert [d.id for d in a] == [d.id for d in b]
    assert len({d.id for d in a}) == 2
    assert {d.id for d in run(s, m=model(sha="b" * 64))}.isdisjoint(d.id for d in a)
    assert {d.id for d in run(s, source="/rec/other.wav")}.isdisjoint(d.id for d in a)
    assert {d.id for d in run(s, device="dev2")}.isdisjoint(d.id for d in a)
    # a file replayed at another time (no time in its name) keeps its ids: they key on the offset
    assert [d.id for d in run(s, time_source="replay-time")] == [d.id for d in run(s, time_source="replay-time")]


def test_live_ids_key_on_time():
    s = col([0.9])
    pp = PostProcessor(model(), SourceInfo("dev1", "hw:1", "clock"))
    one = pp.add(0, 0.0, T0, s[0]) + pp.close()
    pp = PostProcessor(model(), SourceInfo("dev1", "hw:1", "clock"))
    later = pp.add(0, 0.0, T0 + timedelta(hours=1), s[0]) + pp.close()
    assert one[0].id != later[0].id  # same offset after a restart, another moment


def test_config_validation_names_bad_values():
    from edge.config import ConfigError

    with pytest.raises(ConfigError, match="detection.thresholds"):
        parse_config({"detection": {"thresholds": {"Aa_one": 1.5}}})
    with pytest.raises(ConfigError, match="detection.min_windows"):
        parse_config({"detection": {"min_windows": 0}})


def test_bundle_event_rule_confirms_events_in_two_windows():
    """min_windows 2 from the bundle's operating point: a lone window is no event, two in a row are, the event
    starts at its first window and is emitted once it has ended (on the next window); an unconfirmed last window of a file is dropped."""
    m2 = ModelInfo(LABELS, ["One", "Two", "Three"], {"Aa_one": 0.5, "Bb_two": 0.7, "Cc_three": 0.3}, "1.0", "a" * 64,
                   3.0, min_windows=2)
    s = col([0.9, 0.1, 0.6, 0.55, 0.2, 0.7, 0.1, 0.1, 0.8, 0.9, 0.95, 0.1, 0.6])
    pp = PostProcessor(m2, SourceInfo("dev1", "hw:1", "clock"), DetectionConfig(),
                       clock=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
    emitted = []  # (window index at which the event came out, event)
    for i, row in enumerate(s):
        emitted += [(i, d) for d in pp.add(i, i * HOP, T0 + timedelta(seconds=i * HOP), row)]
    at_close = pp.close()
    assert at_close == []  # the lone 0.6 in the last window stays unconfirmed
    assert [(i, d.offset_s, d.n_windows, d.start_utc) for i, d in emitted] == [
        (5, 3.0, 2, "2024-05-01T05:30:03.000Z"), (12, 12.0, 3, "2024-05-01T05:30:12.000Z")]
    # the same windows through a bundle of the old rule (1), and the config overriding the bundle either way
    assert [d.offset_s for d in run(s)] == [0.0, 3.0, 7.5, 12.0, 18.0]
    assert [d.offset_s for d in run(s, DetectionConfig(min_windows=1), m=m2)] == [0.0, 3.0, 7.5, 12.0, 18.0]
    assert [d.offset_s for d in run(s, DetectionConfig(min_windows=3))] == [12.0]
    # an event still open when the segment closes (a stop, the end of a file) is emitted if confirmed
    pp = PostProcessor(m2, SourceInfo("dev1", "/rec/a.wav", "file-name"))
    assert pp.add(0, 0.0, T0, s[9]) == [] and pp.add(1, HOP, T0 + timedelta(seconds=HOP), s[10]) == []
    assert [(d.offset_s, d.n_windows) for d in pp.close()] == [(0.0, 2)]
