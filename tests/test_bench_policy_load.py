"""The policy load benchmark's audit check (a pure helper; the benchmark itself runs with `make bench`)."""
from __future__ import annotations

from benchmarks.bench_policy_load import audit_problems, image_record_counts, jobs


def test_the_audit_check_finds_missing_repeated_and_unknown_image_records():
    records = [
        {"type": "prompt", "prompt_id": "a"},
        {"type": "image", "prompt_id": "a", "index": 0}, {"type": "image", "prompt_id": "a", "index": 1},
        {"type": "image", "prompt_id": "b", "index": 0}, {"type": "image", "prompt_id": "b", "index": 0},
        {"type": "image", "prompt_id": "c", "index": 0},
        {"type": "sampler", "prompt_id": "b", "index": 1},
    ]
    counts = image_record_counts(records)
    assert counts[("b", 0)] == 2 and counts[("b", 1)] == 0 and sum(counts.values()) == 5
    assert audit_problems(counts, {"a": 2, "b": 2}) == {
        "missing": [("b", 1)], "repeated": [("b", 0)], "unknown": [("c", 0)]}
    assert audit_problems(counts, {"a": 2, "b": 1, "c": 1}) == {"missing": [], "repeated": [("b", 0)], "unknown": []}


def test_the_prompts_mix_red_and_benign_texts_with_distinct_seeds():
    todo = jobs(200)
    assert [j[0] for j in todo] == list(range(200)) and len({j[3] for j in todo}) == 200
    assert sum(j[2] for j in todo) == 100
    assert all(j[2] == any(w in j[1].split() for w in ("red", "crimson", "blood")) for j in todo)
