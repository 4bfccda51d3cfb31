"""aurl.data.token_cache: the train/validation split, by piece, seeded, and stable when pieces are added.
(A cache opened and split after a build: test_cache.py and test_dataset.py.)"""

from __future__ import annotations

from aurl.data.token_cache import assign_split


def test_split_is_by_piece_disjoint_seeded_and_stable_under_additions():
    pieces = [{"path": f"p{i}.mid"} for i in range(200)]
    assign_split(pieces, 0.2, seed=3)
    val = {p["path"] for p in pieces if p["split"] == "val"}
    assert 20 <= len(val) <= 60
    again = [{"path": f"p{i}.mid"} for i in range(200)]
    assign_split(again, 0.2, seed=3)
    assert val == {p["path"] for p in again if p["split"] == "val"}
    other = [{"path": f"p{i}.mid"} for i in range(200)]
    assign_split(other, 0.2, seed=4)
    assert val != {p["path"] for p in other if p["split"] == "val"}
    more = [{"path": f"p{i}.mid"} for i in range(300)]
    assign_split(more, 0.2, seed=3)
    assert val == {p["path"] for p in more[:200] if p["split"] == "val"}
    two = [{"path": "a.mid"}, {"path": "b.mid"}]
    assign_split(two, 0.01, seed=0)
    assert sorted(p["split"] for p in two) == ["train", "val"]  # both splits non-empty when possible
    none = [{"path": f"p{i}.mid"} for i in range(10)]
    assign_split(none, 0.0, seed=0)
    assert all(p["split"] == "train" for p in none)


def test_a_folder_all_in_one_split_moves_the_piece_whose_hash_is_nearest_the_other():
    """Mutation: the piece moved chosen from the wrong end (max for val, min for train) -> fails."""
    from aurl.data.token_cache import _split_score

    for fraction, moved in ((0.001, "val"), (0.999, "train")):
        pieces = [{"path": f"p{i}.mid"} for i in range(5)]
        assign_split(pieces, fraction, seed=2)
        scores = {p["path"]: _split_score(2, p["path"]) for p in pieces}
        nearest = (min if moved == "val" else max)(scores, key=scores.get)
        assert [p["path"] for p in pieces if p["split"] == moved] == [nearest], (fraction, scores)
