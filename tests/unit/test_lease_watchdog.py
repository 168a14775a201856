"""The trainer's lease fencing (training/lease.py), in-process: when a trainer must be gone."""

from __future__ import annotations

from llm_train_api.training.lease import MARGIN_S, lease_lapsing, read_lease, write_lease


def test_a_renewed_lease_keeps_the_trainer_and_a_lapsing_one_ends_it(tmp_path):
    path = tmp_path / "lease"
    write_lease(path, 1000.0)
    assert read_lease(path) == 1000.0
    assert not lease_lapsing(path, now=1000.0 - MARGIN_S - 0.01)
    assert lease_lapsing(path, now=1000.0 - MARGIN_S)  # gone before the lease ends
    write_lease(path, 2000.0)  # a renewal
    assert not lease_lapsing(path, now=1500.0)


def test_an_unknown_lease_ends_the_trainer(tmp_path):
    path = tmp_path / "lease"
    assert lease_lapsing(path, now=0.0)  # never written, or removed: not ours
    path.write_text("not a time")
    assert lease_lapsing(path, now=0.0)
