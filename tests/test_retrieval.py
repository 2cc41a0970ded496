"""Retrieval for the RDM (ldm.retrieval, scripts/train_searcher.py): exact maximum-inner-product search against
hand-built databases with known cosines, blocks versus one pass, the database and searcher files, the optional
ScaNN path (through a stand-in module), and the conditioning the neighbours give."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.retrieval import DATABASES, Searcher, join_neighbours, load_database, max_inner_product
from ldm.retrieval import retrieval_conditioning as conditioning_of
from ldm.retrieval.exact_files import (
    EMBEDDINGS_FILE,
    INFO_FILE,
    has_exact_searcher,
    read_exact_searcher,
    write_exact_searcher,
)
from ldm.retrieval.scann_backend import SCANN_CONFIG_FILE, plan_scann
from ldm.retrieval.training import make_searcher
from scripts.train_searcher import main as train_searcher_main
from scripts.train_searcher import parse_args as train_searcher_args

E0, E1, E2 = np.eye(4, dtype=np.float32)[:3]
#: Rows with known cosines to e0 and e1 (norms 5, 1, √2, 1, 5, 5, 2): the unit query e0 scores 1, 0, 1/√2, −1, 0.6,
#: 0.8, 0 against them, and e1 scores 0, 1, 1/√2, 0, 0.8, 0.6, 0.
HAND = np.stack([5 * E0, E1, E0 + E1, -E0, 3 * E0 + 4 * E1, 4 * E0 + 3 * E1, 2 * E2])


def _write_database(folder: Path, embeddings: np.ndarray, parts: int = 1) -> None:
    """``embeddings`` split over ``parts`` files named so that file-name order is row order, with ids and coords."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.arange(len(embeddings))
    for index, chunk in enumerate(np.array_split(rows, parts)):
        np.savez(folder / f"part-{index:03}.npz", embedding=embeddings[chunk], img_id=chunk.astype(np.int64),
                 patch_coords=np.stack([chunk, chunk + 1, chunk + 2, chunk + 3], axis=1))


def _random_database(count: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32) * 3


# ---------------------------------------------------------------------------------------------------------------
# exact search


def test_exact_neighbours_of_a_hand_built_database() -> None:
    queries = torch.tensor(np.stack([E0, E1]))
    rows, scores = max_inner_product(queries, HAND, k=4)
    assert rows.tolist() == [[0, 5, 2, 4], [1, 4, 2, 5]]
    expected = [[1.0, 0.8, 1 / math.sqrt(2), 0.6], [1.0, 0.8, 1 / math.sqrt(2), 0.6]]
    torch.testing.assert_close(scores, torch.tensor(expected))
    # without normalising the database, the raw inner products 5, 4, 3, 1 rank the rows by length too
    raw_rows, raw_scores = max_inner_product(queries[:1], HAND, k=4, normalize_keys=False)
    assert raw_rows.tolist() == [[0, 5, 4, 2]]
    torch.testing.assert_close(raw_scores, torch.tensor([[5.0, 4.0, 3.0, 1.0]]))


@pytest.mark.parametrize("block_rows", [1, 3, 64, 999, 1000, 5000])
def test_blocks_give_the_one_pass_result(block_rows: int, tmp_path: Path) -> None:
    keys = _random_database(1000, 16, seed=0)
    queries = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    cosines = queries.numpy() @ unit.T  # (5, 1000), by hand
    truth = np.argsort(-cosines, axis=1, kind="stable")[:, :7]
    np.save(tmp_path / "keys.npy", keys)
    for source in (keys, np.load(tmp_path / "keys.npy", mmap_mode="r"), torch.from_numpy(keys)):
        rows, scores = max_inner_product(queries, source, k=7, block_rows=block_rows)
        np.testing.assert_array_equal(rows.numpy(), truth)
        np.testing.assert_allclose(scores.numpy(), np.take_along_axis(cosines, truth, axis=1), rtol=1e-5, atol=1e-6)


def test_more_neighbours_than_rows_names_the_flag() -> None:
    with pytest.raises(ValueError, match=r"cannot return 8 neighbours from a database of 7 embeddings.*--knn"):
        max_inner_product(torch.ones(1, 4), HAND, k=8)


# ---------------------------------------------------------------------------------------------------------------
# database and searcher files


def test_database_files_are_joined_in_name_order(tmp_path: Path) -> None:
    keys = _random_database(10, 4, seed=2)
    _write_database(tmp_path / "db", keys, parts=3)
    database = load_database(tmp_path / "db")
    assert set(database) == {"embedding", "img_id", "patch_coords"}
    np.testing.assert_array_equal(database["embedding"], keys)
    np.testing.assert_array_equal(database["img_id"], np.arange(10))
    assert database["patch_coords"].shape == (10, 4)


def test_database_problems_name_the_folder_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"retrieval database folder not found: .*absent \(from --database\); "
                                                r"put the database there: .*'embedding' \(N, D\)"):
        load_database(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.npz files in .*empty"):
        load_database(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    np.savez(tmp_path / "bad" / "a.npz", features=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"a\.npz has no 'embedding' array"):
        load_database(tmp_path / "bad")
    (tmp_path / "uneven").mkdir()
    np.savez(tmp_path / "uneven" / "a.npz", embedding=np.ones((3, 4)), img_id=np.arange(2))
    with pytest.raises(ValueError, match=r"'img_id' .* has 2 rows but 'embedding' has 3"):
        load_database(tmp_path / "uneven")


def test_exact_searcher_files_hold_unit_rows(tmp_path: Path) -> None:
    keys = _random_database(50, 8, seed=3)
    write_exact_searcher(tmp_path / "s", keys, knn=5, block_rows=7)
    assert has_exact_searcher(tmp_path / "s")
    stored = read_exact_searcher(tmp_path / "s", count=50)
    assert isinstance(stored, np.memmap) and stored.dtype == np.float32
    np.testing.assert_allclose(stored, keys / np.linalg.norm(keys, axis=1, keepdims=True), rtol=1e-6)
    assert json.loads((tmp_path / "s" / INFO_FILE).read_text())["knn"] == 5
    with pytest.raises(ValueError, match=r"covers 50 embeddings but the database has 51.*train_searcher\.py again"):
        read_exact_searcher(tmp_path / "s", count=51)
    np.save(tmp_path / "s" / EMBEDDINGS_FILE, np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"does not describe"):
        read_exact_searcher(tmp_path / "s", count=50)


def test_train_searcher_writes_what_the_searcher_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    keys = _random_database(300, 8, seed=4)
    _write_database(tmp_path / "data/rdm/retrieval_databases/openimages", keys, parts=2)
    direct = Searcher("openimages")
    assert direct.backend == "exact"
    train_searcher_main(["-d", "data/rdm/retrieval_databases/openimages", "-t", "data/rdm/searchers/openimages",
                         "-k", "5", "--unknown-flag"])  # unknown arguments are ignored, as in the original
    assert has_exact_searcher(tmp_path / "data/rdm/searchers/openimages")
    trained = Searcher("openimages")
    assert trained.backend == "exact-file" and isinstance(trained.keys, np.memmap)
    queries = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    first, second = direct.search(queries, 6), trained(queries, 6)
    unit_queries = torch.nn.functional.normalize(queries, dim=-1).numpy()
    truth = np.argsort(-(unit_queries @ (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T), axis=1)[:, :6]
    np.testing.assert_array_equal(first["nns"], truth)
    np.testing.assert_array_equal(second["nns"], truth)


def test_train_searcher_defaults_are_the_originals() -> None:
    opt = train_searcher_args([])
    assert (opt.database, opt.target_path, opt.knn) == (
        "data/rdm/retrieval_databases/openimages", "data/rdm/searchers/openimages", 20)


def test_search_result_is_the_originals_dictionary(tmp_path: Path) -> None:
    _write_database(tmp_path / "db", HAND)
    searcher = Searcher("openimages", database_path=tmp_path / "db", searcher_savedir=tmp_path / "none")
    tokens = torch.tensor(np.stack([2 * E0, E1]))[:, None, :].repeat(1, 3, 1)  # (B, T, D): the first token is used
    found = searcher(tokens, 3)
    assert found["nns"].tolist() == [[0, 5, 2], [1, 4, 2]]
    np.testing.assert_array_equal(found["img_ids"], found["nns"])
    assert found["patch_coords"].shape == (2, 3, 4)
    unit = HAND / np.linalg.norm(HAND, axis=1, keepdims=True)
    np.testing.assert_allclose(found["nn_embeddings"], unit[found["nns"]], rtol=1e-6)
    np.testing.assert_array_equal(found["queries"], tokens[:, 0].numpy())
    np.testing.assert_allclose(found["q_embeddings"], np.stack([E0, E1]))
    assert found["exec_time"] >= 0
    with pytest.raises(ValueError, match=r"unknown retrieval database 'nope'; choose one of openimages"):
        Searcher("nope")


# ---------------------------------------------------------------------------------------------------------------
# ScaNN, when installed (a stand-in module records what it is asked)


def test_scann_plan_follows_the_size_thresholds() -> None:
    assert plan_scann(19_999, 20).method == "brute_force"
    hashing = plan_scann(20_000, 20)
    assert (hashing.method, hashing.reorder_k, hashing.aiq_threshold, hashing.dims_per_block) == ("ah", 40, 0.2, 2)
    assert plan_scann(99_999, 20, reorder_k=7).reorder_k == 7
    tree = plan_scann(1_000_000, 20)
    assert (tree.method, tree.num_leaves, tree.num_leaves_to_search, tree.training_sample_size) == (
        "partitioned_ah", 1000, 50, 100_000)
    assert plan_scann(100_000, 20).num_leaves_to_search == 15  # 316 leaves // 20
    assert plan_scann(100_000, 20, num_leaves=10).num_leaves_to_search == 1


class _FakeScann:
    """The parts of ``scann.scann_ops_pybind`` the retrieval code calls, recording them; searches exactly."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.scann_ops_pybind = types.SimpleNamespace(builder=self.builder, load_searcher=self.load_searcher)

    def builder(self, data: np.ndarray, k: int, metric: str) -> _FakeScann:
        self.calls.append(("builder", data.copy(), k, metric))
        self.data = data
        return self

    def score_brute_force(self) -> _FakeScann:
        self.calls.append(("score_brute_force",))
        return self

    def build(self) -> _FakeScann:
        return self

    def serialize(self, folder: str) -> None:
        self.calls.append(("serialize", folder))
        (Path(folder) / SCANN_CONFIG_FILE).write_bytes(b"")
        np.save(Path(folder) / "data.npy", self.data)

    def load_searcher(self, folder: str) -> _FakeScann:
        self.calls.append(("load_searcher", folder))
        self.data = np.load(Path(folder) / "data.npy")
        return self

    def search_batched(self, queries: np.ndarray, final_num_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-(queries @ self.data.T), axis=1)[:, :final_num_neighbors]
        return order.astype(np.int32), np.zeros(order.shape, np.float32)


def test_with_scann_installed_its_searcher_is_trained_and_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = _FakeScann()
    monkeypatch.setitem(sys.modules, "scann", fake)
    _write_database(tmp_path / "db", HAND)
    make_searcher(tmp_path / "db", tmp_path / "searcher", knn=3)
    (name, data, k, metric), (brute,), (saved, folder) = fake.calls
    assert (name, k, metric, brute, saved, folder) == (
        "builder", 3, "dot_product", "score_brute_force", "serialize", str(tmp_path / "searcher"))
    np.testing.assert_allclose(data, HAND / np.linalg.norm(HAND, axis=1, keepdims=True), rtol=1e-6)
    searcher = Searcher("openimages", database_path=tmp_path / "db", searcher_savedir=tmp_path / "searcher")
    assert searcher.backend == "scann" and fake.calls[-1][0] == "load_searcher"
    assert searcher(torch.tensor(np.stack([E0])), 3)["nns"].tolist() == [[0, 5, 2]]
    # the same folder without scann: the exact search over the database, the same neighbours
    monkeypatch.setitem(sys.modules, "scann", None)
    exact = Searcher("openimages", database_path=tmp_path / "db", searcher_savedir=tmp_path / "searcher")
    assert exact.backend == "exact" and exact(torch.tensor(np.stack([E0])), 3)["nns"].tolist() == [[0, 5, 2]]


def test_searcher_method_train_searcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_database(tmp_path / "db", HAND)
    searcher = Searcher("openimages", database_path=tmp_path / "db", searcher_savedir=tmp_path / "none")
    monkeypatch.setitem(sys.modules, "scann", None)
    searcher.train_searcher(3, searcher_savedir=tmp_path / "exact")
    assert searcher.backend == "exact-file" and has_exact_searcher(tmp_path / "exact")
    assert searcher(torch.tensor(np.stack([E1])), 3)["nns"].tolist() == [[1, 4, 2]]
    with pytest.raises(ValueError, match=r"metric 'squared_l2'.*use metric='dot_product'"):
        searcher.train_searcher(3, metric="squared_l2")
    fake = _FakeScann()
    monkeypatch.setitem(sys.modules, "scann", fake)
    searcher.train_searcher(3, searcher_savedir=tmp_path / "scann")
    assert [call[0] for call in fake.calls] == ["builder", "score_brute_force", "serialize"]
    assert searcher.backend == "scann" and searcher(torch.tensor(np.stack([E1])), 3)["nns"].tolist() == [[1, 4, 2]]


# ---------------------------------------------------------------------------------------------------------------
# conditioning


class _FixedEncoder:
    """``encode`` → the rows of ``table`` for the prompts ``"0"``, ``"1"``, ..., as ``n_repeat`` tokens."""

    def __init__(self, table: np.ndarray, n_repeat: int) -> None:
        self.table, self.n_repeat = torch.from_numpy(table), n_repeat

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.table[[int(p) for p in prompts]][:, None].repeat(1, self.n_repeat, 1)


def test_conditioning_is_text_then_unit_neighbours(tmp_path: Path) -> None:
    _write_database(tmp_path / "db", HAND)
    searcher = Searcher("openimages", database_path=tmp_path / "db", searcher_savedir=tmp_path / "none")
    encoder = _FixedEncoder(np.stack([E0, E1]), n_repeat=2)
    c, uc = conditioning_of(encoder, ["0", "1", "0"], searcher, knn=3, scale=5.0)
    assert c.shape == (3, 2 + 3, 4)
    unit = torch.from_numpy(HAND / np.linalg.norm(HAND, axis=1, keepdims=True))
    torch.testing.assert_close(c[:, :2], encoder.encode(["0", "1", "0"]))
    torch.testing.assert_close(c[0, 2:], unit[[0, 5, 2]])
    torch.testing.assert_close(c[1, 2:], unit[[1, 4, 2]])
    assert torch.equal(uc, torch.zeros_like(c))
    text_only, none = conditioning_of(encoder, ["1"], None, knn=3, scale=1.0)
    assert text_only.shape == (1, 2, 4) and none is None


def test_neighbours_of_another_width_name_the_clip_model() -> None:
    with pytest.raises(ValueError, match=r"shape \(1, 3, 8\) cannot join text tokens of shape \(1, 1, 4\)"):
        join_neighbours(torch.zeros(1, 1, 4), np.zeros((1, 3, 8), np.float32))


def test_databases_are_the_originals() -> None:
    assert DATABASES[0] == "openimages" and "artbench-surrealism" in DATABASES and len(DATABASES) == 11
