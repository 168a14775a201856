"""The request hash (what tells an identical retry of a create from another job under the
same id) is the same whether the row's canonical hyperparameters are handed to it or not,
and stays the digest of the canonical request fields, so hashes stored by earlier releases
still match."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from llm_train_api.domain import NewJob
from llm_train_api.store.rows import canonical_json, request_hash

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@st.composite
def new_jobs(draw: st.DrawFn) -> NewJob:
    return NewJob(
        job_id="j",
        model_name=draw(st.text(min_size=1, max_size=10)),
        dataset=draw(st.text(min_size=1, max_size=10)),
        hyperparameters=draw(st.dictionaries(st.text(max_size=8), _json, max_size=5)),
        priority=draw(st.sampled_from([0, 0, 5])),
        max_attempts=draw(st.sampled_from([3, 3, 1])),
        max_runtime_seconds=draw(st.none() | st.integers(1, 10_000)),
        resources=draw(st.none() | st.dictionaries(st.text(max_size=5), _json, max_size=2)),
        validation_dataset=draw(st.none() | st.text(max_size=6)),
        output_model=draw(st.none() | st.text(max_size=6)),
        origin=draw(st.none() | st.fixed_dictionaries(
            {"job_id": st.text(max_size=5), "created_us": st.integers(0, 2**50),
             "step": st.integers(0, 10**6)})),
    )


@given(new_jobs())
def test_the_row_s_hyperparameters_give_the_same_hash(new):
    expected = hashlib.sha256(canonical_json(new.request_fields()).encode()).hexdigest()
    assert request_hash(new) == expected
    assert request_hash(new, canonical_json(new.hyperparameters)) == expected


def test_a_known_request_keeps_its_hash():
    new = NewJob(job_id="j", model_name="gpt2", dataset="wikitext-2",
                 hyperparameters={"lr": 0.0003, "epochs": 3, "name": "é"})
    body = '["gpt2","wikitext-2",{"epochs":3,"lr":0.0003,"name":"é"}]'
    assert request_hash(new, canonical_json(new.hyperparameters)) == \
        hashlib.sha256(body.encode()).hexdigest()
