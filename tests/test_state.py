"""training_state.json: atomic writes with .bak, corrupt detection, mismatch refusal, the run lock."""

from __future__ import annotations

import json

import pytest

from aurl.console import UserError
from aurl.train import state as st


def test_write_keeps_bak_and_reads_back(tmp_path):
    s = st.new_state()
    s["stages"]["1"] = st.new_stage_entry(world_size=1)
    st.write_state(tmp_path, s)
    s["stages"]["1"]["step"] = 5
    st.write_state(tmp_path, s)
    assert st.read_state(tmp_path)["stages"]["1"]["step"] == 5
    assert json.loads((tmp_path / "training_state.json.bak").read_text())["stages"]["1"]["step"] == 0


@pytest.mark.parametrize("text", ["{", "[]", '{"schema_version": 99, "stages": {}}',
                                  '{"schema_version": 1, "stages": {"1": {"status": "??"}}}'])
def test_corrupt_state_offers_bak(tmp_path, text):
    st.write_state(tmp_path, st.new_state())
    st.write_state(tmp_path, st.new_state())
    (tmp_path / "training_state.json").write_text(text)
    with pytest.raises(UserError, match=r"corrupt.*\.bak"):
        st.read_state(tmp_path)


def test_resume_refused_with_differences():
    entry = st.new_stage_entry(world_size=2, micro_batch=8, grad_accum=1, seed=0, data_fingerprint="a",
                               config_hash="x")
    with pytest.raises(UserError, match="world_size.*data_fingerprint"):
        st.check_resumable(entry, {**entry, "world_size": 1, "data_fingerprint": "b"}, 1)
    st.check_resumable(entry, dict(entry), 1)


def test_lock(tmp_path):
    assert not st.is_live(tmp_path)
    lock = st.RunLock(tmp_path).acquire()
    assert st.is_live(tmp_path) and "pid" in st.holder(tmp_path)
    with pytest.raises(UserError, match="another run"):
        st.RunLock(tmp_path).acquire()
    lock.release()
    assert not st.is_live(tmp_path)
