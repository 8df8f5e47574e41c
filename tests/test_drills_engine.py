"""Bounded versions of the engine, source, trainer and checkpoint reliability drills (issue 6).

`python -m c2p_stream.drills` runs the same functions at the issue's sizes; here each runs
small enough for CI (about three minutes in all on two cores) and its criteria are asserted.
"""

import pytest

import pulse
from c2p_stream.drills import engine as drills

NO_PULSE = pulse.missing()
needs_pulse = pytest.mark.skipif(NO_PULSE is not None, reason=f"virtual microphone unavailable: {NO_PULSE}")


def check(result):
    assert result["passed"], "\n".join(result["failures"])
    return result


def test_soak_keeps_memory_flat_and_events_continuous(tmp_path):
    result = check(drills.soak(300, sample_s=0.01, work_dir=tmp_path))
    assert result["events"] == result["expected_events"] == 299 and result["seq_continuous"]
    assert result["skipped_hops"] == 0 and result["samples_after_warmup"] >= 2


def test_falling_behind_counts_skips_bounds_lag_and_recovers(tmp_path):
    result = check(drills.falling_behind(1.5, slow_s=8, recover_s=6, cli_s=5, work_dir=tmp_path))
    assert result["skipped"] > 0 and result["skipped_reported_in_last_event"] == result["skipped"]
    assert result["max_lag_s"] <= 1.5 + 1.0 + 0.3 and result["recovery_hops"] <= 2
    assert result["cli"]["skipped"] > 0 and result["cli"]["skipped_reported"] == result["cli"]["skipped"]


@needs_pulse
def test_device_loss_is_reported_within_2_s_and_exits_cleanly(tmp_path):
    result = check(drills.device_loss(1, work_dir=tmp_path))
    for name in ("SIGKILL", "SIGSTOP"):
        figures = result["by_signal"][name]
        assert figures["passed"] == figures["rounds"] == 1
        assert figures["terminal_s_max"] <= 2.0 and figures["client_s_max"] <= 2.0
    assert result["exit_codes"] == [1]
    assert all(reason.startswith("source lost") for reason in result["end_reasons"])


@needs_pulse
def test_a_3_s_capture_stall_shows_in_capture_lag(tmp_path):
    result = check(drills.capture_lag(3.0, events_after=7, work_dir=tmp_path))
    assert result["capture_lag_first_after_s"] >= 2.7 and result["capture_lag_before_max_s"] < 0.5
    assert result["exit_code"] == 0 and result["overflows"] == 0  # PulseAudio buffered: no overflow flag


def test_training_killed_mid_save_resumes_to_identical_metrics(tmp_path):
    result = check(drills.training_killed(2, phases=("state", "checkpoint"), epochs=3, attributes=("arousal",),
                                          work_dir=tmp_path))
    assert result["kills_done"] == 2 and result["kills_by_phase"] == {"state": 1, "checkpoint": 1}
    assert result["metrics_equal"] and result["weights_equal"]


def test_corrupt_cache_is_rebuilt_and_corrupt_checkpoints_refused(tmp_path):
    result = check(drills.corruption(manifest_flips=200, work_dir=tmp_path))
    assert all(case["rebuilt_equal"] and case["reported"] for case in result["cache"].values())
    assert all(case["clear_one_line_error"] for case in result["checkpoint"].values())
    assert result["manifest_bit_flips"]["loaded_silently"] == 0 and result["manifest_bit_flips"]["crashed"] == 0


def test_bad_audio_gives_clear_errors_and_other_formats_agree(tmp_path):
    result = check(drills.bad_audio(audio_s=120, work_dir=tmp_path))  # 119 hops: one near-tie flip is < 1%
    assert len(result["errors"]) >= 12 and all(case["clear_one_line_error"] for case in result["errors"].values())
    counted = [v for v in result["valid"].values() if v["counts_toward_passed"]]
    assert len(counted) == 7 and all(v["agreement"] >= 0.99 for v in counted)
    assert result["reference_max_probability_mean"] > 0.5  # trained heads: labels are not coin flips


def test_bad_corpora_name_file_and_line(tmp_path):
    result = check(drills.bad_corpora(work_dir=tmp_path))
    assert len(result["cases"]) >= 10
    assert all(case["c2p_train_exit_code"] == 2 and case["c2p_train_one_line"] for case in result["cases"].values())


def test_security_no_unpickling_and_loopback_feed(tmp_path):
    result = check(drills.security(work_dir=tmp_path))
    assert not result["marker_after_checkpoints"] and not result["malicious_training_state"]["marker_exists"]
    assert result["source_audit"]["all_weights_only"] and result["load_checkpoint_with_pickle_disabled"]
    assert result["feed_binding"]["listening"] == ["127.0.0.1"]
    assert result["feed_binding"]["non_loopback"]["0.0.0.0 without token"]["warning_lines"]
