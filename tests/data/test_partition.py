import numpy as np
import pytest

from fedmem.data.partition import partition_by_source, partition_dirichlet, partition_iid


def assert_disjoint_cover(parts: list[list[int]], n_items: int) -> None:
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(n_items))


def label_skew(parts: list[list[int]], labels: list[str]) -> float:
    """Mean total-variation distance between each client's label mix and the global mix."""
    names = sorted(set(labels))
    codes = np.array([names.index(label) for label in labels])
    overall = np.bincount(codes, minlength=len(names)) / len(codes)
    distances = [
        0.5 * np.abs(np.bincount(codes[part], minlength=len(names)) / len(part) - overall).sum()
        for part in parts
    ]
    return float(np.mean(distances))


LABELS = [f"topic{i % 4}" for i in range(800)]


# --- partition_iid ----------------------------------------------------------------------


def test_iid_parts_are_disjoint_and_cover_all_items():
    assert_disjoint_cover(partition_iid(103, 4, seed=0), 103)


def test_iid_part_sizes_differ_by_at_most_one():
    assert sorted(len(p) for p in partition_iid(10, 3, seed=0)) == [3, 3, 4]


def test_iid_is_deterministic_in_seed():
    assert partition_iid(50, 3, seed=2) == partition_iid(50, 3, seed=2)
    assert partition_iid(50, 3, seed=2) != partition_iid(50, 3, seed=3)


def test_iid_shuffles_items():
    assert partition_iid(20, 1, seed=0) != [list(range(20))]


def test_iid_rejects_zero_clients():
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        partition_iid(10, 0, seed=0)


# --- partition_by_source ----------------------------------------------------------------


def test_by_source_gives_each_sorted_source_to_its_own_client():
    sources = ["mcq", "open", "icd", "open", "mcq", "icd"]
    assert partition_by_source(sources, 3) == [[2, 5], [0, 4], [1, 3]]


def test_by_source_deals_extra_sources_round_robin():
    sources = ["a", "b", "c", "d", "e"]
    assert partition_by_source(sources, 2) == [[0, 2, 4], [1, 3]]


def test_by_source_never_splits_a_source():
    sources = ["x", "y", "z", "w"] * 5
    first, second = partition_by_source(sources, 2)
    assert {sources[i] for i in first}.isdisjoint(sources[i] for i in second)


def test_by_source_rejects_fewer_sources_than_clients_naming_the_count():
    with pytest.raises(ValueError, match="at least 4 distinct sources .* got 2"):
        partition_by_source(["a", "b", "a"], 4)


# --- partition_dirichlet ----------------------------------------------------------------


def test_dirichlet_parts_are_disjoint_and_cover_all_items():
    assert_disjoint_cover(partition_dirichlet(LABELS, 5, alpha=0.5, seed=0), len(LABELS))


def test_dirichlet_is_deterministic_in_seed():
    first = partition_dirichlet(LABELS, 5, alpha=0.5, seed=1)
    assert first == partition_dirichlet(LABELS, 5, alpha=0.5, seed=1)
    assert first != partition_dirichlet(LABELS, 5, alpha=0.5, seed=2)


def test_dirichlet_gives_every_client_at_least_min_size_items():
    parts = partition_dirichlet(LABELS, 8, alpha=0.1, seed=0, min_size=20)
    assert min(len(p) for p in parts) >= 20


def test_small_alpha_skews_label_mix_and_large_alpha_evens_it():
    skewed = label_skew(partition_dirichlet(LABELS, 5, alpha=0.1, seed=0), LABELS)
    even = label_skew(partition_dirichlet(LABELS, 5, alpha=1000.0, seed=0), LABELS)
    assert skewed > 0.3
    assert even < 0.05


def test_dirichlet_gives_up_with_a_clear_error_when_min_size_is_unreachable():
    two_labels = ["a"] * 400 + ["b"] * 400  # nearly all of each goes to one of 4 clients
    with pytest.raises(ValueError, match="no Dirichlet.*tries"):
        partition_dirichlet(two_labels, 4, alpha=0.001, seed=0, min_size=150)


def test_dirichlet_rejects_more_required_items_than_exist():
    with pytest.raises(ValueError, match="cannot give 4 clients 300 items each from 800"):
        partition_dirichlet(LABELS, 4, alpha=1.0, seed=0, min_size=300)


def test_dirichlet_rejects_non_positive_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition_dirichlet(LABELS, 4, alpha=0.0, seed=0)
