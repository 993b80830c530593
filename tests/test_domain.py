"""DataConfig parsing, DomainDataset splits, epochs, items, errors and the hashed index cache."""

import os
import time

import numpy as np
import pytest

from data_fixtures import write_domain, write_domains
from megamix.data.config import DataConfig, DomainSpec, parse_data_path, parse_split
from megamix.data.domain import DomainDataset, build_domain_datasets, split_document_counts, split_documents

SPLIT = (0.8, 0.1, 0.1)


def _ds(prefix, tmp_path, split="train", seq=16, seed=1, name="a", weights=SPLIT, cache="cache"):
    return DomainDataset(prefix, name, 0, split, seq, weights, seed, str(tmp_path / cache))


# ---------------------------------------------------------------- config
def test_parse_data_path_forms():
    specs = parse_data_path(["/d/code_text_document", "law=/x/y"])
    assert specs == [DomainSpec("code", "/d/code_text_document", None), DomainSpec("law", "/x/y", None)]
    specs = parse_data_path(["0.3", "/d/a", "0.7", "b=/d/q"])
    assert [(s.name, s.weight) for s in specs] == [("a", 0.3), ("b", 0.7)]
    assert parse_data_path(["1 /d/a 2 /d/b"])[1].weight == 2.0


@pytest.mark.parametrize("tokens,match", [
    (["/d/a", "/e/a"], "duplicate domain name 'a'"), (["0.5", "/d/a", "0.5"], "odd number"),
    (["0.5", "/d/a", "/d/b", "/d/c"], "expected a weight"), ([], "at least one"), (["=/d/a"], "NAME=PREFIX"),
    (["-1", "/d/a"], ">= 0"), (["0", "/d/a", "0", "/d/b"], "positive sum"),
])
def test_parse_data_path_errors(tokens, match):
    with pytest.raises(ValueError, match="--data-path") as err:
        parse_data_path(tokens)
    assert match in str(err.value)


def test_parse_split():
    assert parse_split("98,1,1") == pytest.approx((0.98, 0.01, 0.01))
    assert parse_split("98,2") == pytest.approx((0.98, 0.02, 0.0))
    for bad in ("a,b", "1,2,3,4", "-1,1,1", "0,1,1", "0,0,0"):
        with pytest.raises(ValueError, match="--split"):
            parse_split(bad)


def test_data_config_validation(tmp_path):
    cfg = DataConfig(data_path=["0.4", str(tmp_path / "a"), "0.6", str(tmp_path / "b")], split="90,5,5")
    assert [d.name for d in cfg.data_path] == ["a", "b"] and cfg.weights == (0.4, 0.6)
    assert cfg.cache_dir == str(tmp_path / "cache") and cfg.split == pytest.approx((0.9, 0.05, 0.05))
    with pytest.raises(ValueError, match="--seq-length"):
        DataConfig(data_path=["/d/a"], seq_length=0)
    with pytest.raises(ValueError, match="--data-path"):
        DataConfig(data_path=[])
    with pytest.raises(ValueError, match="--split"):
        DataConfig(data_path=["/d/a"], split=(1, -1, 0))
    with pytest.raises(ValueError, match="every domain or for none"):
        DataConfig(data_path=[DomainSpec("a", "/d/a", 1.0), DomainSpec("b", "/d/b", None)])


# ---------------------------------------------------------------- splits
def test_split_counts_rounding_and_minimum():
    assert split_document_counts(100, (0.98, 0.01, 0.01)) == [98, 1, 1]
    assert split_document_counts(10, (0.98, 0.01, 0.01)) == [8, 1, 1]  # at least one valid/test doc
    assert split_document_counts(10, (1.0, 0.0, 0.0)) == [10, 0, 0]
    assert sum(split_document_counts(7, (0.5, 0.3, 0.2))) == 7


def test_splits_disjoint_and_cover(tmp_path):
    prefix = write_domain(tmp_path, "a", num_docs=50)
    sets = {s: set(_ds(prefix, tmp_path, split=s).documents.tolist()) for s in ("train", "valid", "test")}
    assert not (sets["train"] & sets["valid"]) and not (sets["train"] & sets["test"])
    assert not (sets["valid"] & sets["test"])
    assert sets["train"] | sets["valid"] | sets["test"] == set(range(50))
    # valid/test come from the whole domain, not its tail; the split depends on the name, not the order
    assert split_documents(50, SPLIT, 1, "a")["valid"].tolist() != list(range(40, 45))
    assert split_documents(50, SPLIT, 1, "a")["train"].tolist() != split_documents(50, SPLIT, 1, "b")["train"].tolist()


# ---------------------------------------------------------------- stream
def test_items_shape_shift_and_content(tmp_path):
    prefix = write_domain(tmp_path, "a")
    ds = _ds(prefix, tmp_path)
    doc_idx, sample_idx, shuffle = ds.epoch_arrays(0)
    stream = np.concatenate([ds._indexed[int(d)] for d in doc_idx]).astype(np.int64)
    for k in (0, 1, len(ds) - 1):
        item = ds[k]
        j = int(shuffle[k])
        assert item["tokens"].dtype == np.int64 and item["tokens"].shape == (16,)
        np.testing.assert_array_equal(item["tokens"], stream[j * 16:j * 16 + 16])
        np.testing.assert_array_equal(item["labels"], stream[j * 16 + 1:j * 16 + 17])
        assert item["loss_mask"].dtype == np.float32 and item["loss_mask"].sum() == 16
        assert item["domain_id"] == 0
    assert ds.num_tokens == len(stream) and len(ds) == (len(stream) - 1) // 16


def test_endless_epochs_differ_and_cover(tmp_path):
    prefix = write_domain(tmp_path, "a")
    ds = _ds(prefix, tmp_path)
    n = len(ds)
    e0, e1 = ds.epoch_arrays(0), ds.epoch_arrays(1)
    assert not np.array_equal(e0[0], e1[0]) and not np.array_equal(e0[2], e1[2])
    np.testing.assert_array_equal(np.sort(e0[0]), np.sort(e1[0]))  # same documents, other order
    for a in range(3 * n, 3 * n + 3):  # far epochs are valid and built on demand
        assert ds[a]["tokens"].shape == (16,)
    batch = ds.get_batch(np.array([0, n + 2, 5 * n + 1, 3]))
    for row, k in enumerate([0, n + 2, 5 * n + 1, 3]):
        np.testing.assert_array_equal(batch["tokens"][row], ds[k]["tokens"])
        np.testing.assert_array_equal(batch["labels"][row], ds[k]["labels"])
    assert len(ds._epochs) <= 4  # LRU bound: memory O(domain size)
    with pytest.raises(IndexError, match="negative"):
        ds[-1]


def test_same_seed_same_stream_different_seed_different(tmp_path):
    prefix = write_domain(tmp_path, "a")
    ks = np.arange(0, 60)
    a = _ds(prefix, tmp_path, seed=1).get_batch(ks)["tokens"]
    b = _ds(prefix, tmp_path, seed=1, cache="other").get_batch(ks)["tokens"]
    c = _ds(prefix, tmp_path, seed=2).get_batch(ks)["tokens"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_seed_fixes_the_documents_and_seed_still_orders_them(tmp_path):
    prefix = write_domain(tmp_path, "a")
    ks = np.arange(0, 40)
    split = {seed: {sp: _ds(prefix, tmp_path, split=sp, seed=seed).documents for sp in ("train", "test")}
             for seed in (1, 2)}
    assert not np.array_equal(split[1]["test"], split[2]["test"])  # without --split-seed the seed re-draws it
    fixed = {seed: DomainDataset(prefix, "a", 0, "test", 16, SPLIT, seed, str(tmp_path / "cache"), split_seed=7)
             for seed in (1, 2, 3)}
    for ds in fixed.values():
        np.testing.assert_array_equal(ds.documents, fixed[1].documents)  # same test documents for every seed
    assert not np.array_equal(fixed[1].get_batch(ks)["tokens"], fixed[2].get_batch(ks)["tokens"])
    same = DomainDataset(prefix, "a", 0, "test", 16, SPLIT, 7, str(tmp_path / "cache"), split_seed=7)
    np.testing.assert_array_equal(same.documents, _ds(prefix, tmp_path, split="test", seed=7).documents)
    # the cache name changes only when the split seed differs from the seed (old caches stay valid)
    assert same.cache_hash(0) == _ds(prefix, tmp_path, split="test", seed=7).cache_hash(0)
    assert fixed[1].cache_hash(0) != _ds(prefix, tmp_path, split="test", seed=1).cache_hash(0)
    cfg = DataConfig(data_path=[prefix], split=SPLIT, seq_length=16, seed=2, split_seed=7,
                     data_cache_path=str(tmp_path / "cache"))
    np.testing.assert_array_equal(build_domain_datasets(cfg, "test")[0].documents, fixed[1].documents)
    with pytest.raises(ValueError, match="--split-seed"):
        DataConfig(data_path=[prefix], split_seed=-1)


def test_too_small_domain_and_zero_split(tmp_path):
    prefix = write_domain(tmp_path, "tiny", num_docs=4, mean_len=3)
    with pytest.raises(ValueError, match=r"domain 'tiny' .*tiny_text_document.*tokens.*needs .*1025") as err:
        _ds(prefix, tmp_path, seq=1024, name="tiny")
    assert "valid" not in str(err.value)
    with pytest.raises(ValueError, match="weight 0"):
        _ds(prefix, tmp_path, split="test", name="tiny", weights=(1.0, 0.0, 0.0), seq=2)


def test_build_domain_datasets(tmp_path):
    prefixes = write_domains(tmp_path, ["a", "b"])
    cfg = DataConfig(data_path=prefixes, split="80,20,0", seq_length=8, data_cache_path=str(tmp_path / "c"))
    train = build_domain_datasets(cfg, "train")
    assert [(d.name, d.domain_id) for d in train] == [("a", 0), ("b", 1)]
    assert build_domain_datasets(cfg, "test") == []


# ---------------------------------------------------------------- cache
def test_cache_hash_changes_with_every_input(tmp_path):
    prefix = write_domain(tmp_path, "a")
    (tmp_path / "elsewhere").mkdir()
    other = write_domain(tmp_path / "elsewhere", "a")  # same name and content, other path
    base = _ds(prefix, tmp_path)
    h = base.cache_hash(0)
    variants = [
        _ds(prefix, tmp_path, seed=2), _ds(prefix, tmp_path, seq=8), _ds(prefix, tmp_path, split="valid"),
        _ds(prefix, tmp_path, weights=(0.7, 0.2, 0.1)), _ds(prefix, tmp_path, name="b"), _ds(other, tmp_path),
    ]
    hashes = {v.cache_hash(0) for v in variants} | {base.cache_hash(1)}
    assert h not in hashes and len(hashes) == len(variants) + 1
    st = os.stat(prefix + ".idx")
    os.utime(prefix + ".idx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # rewritten data
    assert base.cache_hash(0) != h


def test_cache_files_reused_and_described(tmp_path, monkeypatch):
    prefix = write_domain(tmp_path, "a")
    first = _ds(prefix, tmp_path)
    paths = first.cache_paths(0)
    assert all(os.path.isfile(p) for p in paths.values())
    import json
    desc = json.load(open(paths["json"]))
    assert desc["seed"] == 1 and desc["epoch"] == 0 and desc["samples_per_epoch"] == len(first)
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".tmp")]
    mtimes = {p: os.stat(p).st_mtime_ns for p in paths.values()}

    def boom(self, epoch):
        raise AssertionError("rebuilt an epoch that was cached")

    monkeypatch.setattr(DomainDataset, "build_epoch", boom)
    time.sleep(0.01)
    second = _ds(prefix, tmp_path)
    for a, b in zip(first.epoch_arrays(0), second.epoch_arrays(0)):
        assert isinstance(b.base, np.memmap)  # memory-mapped from the cache, not rebuilt
        np.testing.assert_array_equal(a, b)
    assert {p: os.stat(p).st_mtime_ns for p in paths.values()} == mtimes


# ---------------------------------------------------------------- two ranks (gloo)
def _gloo_worker(rank: int, prefix: str, cache: str, out: str, init_file: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank == 0:
            time.sleep(1.0)  # rank 1 reaches the cache first and must wait for rank 0
        else:
            def refuse(self, epoch):
                raise AssertionError(f"rank 1 built epoch {epoch}; only rank 0 may build")
            DomainDataset._write_epoch = refuse
        ds = DomainDataset(prefix, "a", 0, "train", 16, SPLIT, 1, cache)
        ds.prepare(3 * len(ds))  # epochs 1 and 2, collectively
        arrays = [np.asarray(a) for e in range(3) for a in ds.epoch_arrays(e)]
        np.savez(os.path.join(out, f"rank{rank}.npz"), *arrays,
                 tokens=ds.get_batch(np.arange(3 * len(ds)))["tokens"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_rank0_builds_rank1_reads(tmp_path):
    import torch.multiprocessing as mp
    prefix = write_domain(tmp_path, "a")
    cache = str(tmp_path / "cache")
    mp.spawn(_gloo_worker, args=(prefix, cache, str(tmp_path), str(tmp_path / "init")), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert sorted(r0.files) == sorted(r1.files) and len(r0.files) == 10
    for key in r0.files:
        np.testing.assert_array_equal(r0[key], r1[key])
    reference = DomainDataset(prefix, "a", 0, "train", 16, SPLIT, 1, str(tmp_path / "fresh"))
    np.testing.assert_array_equal(r0["arr_2"], reference.build_epoch(0)[2])
    assert len([f for f in os.listdir(cache) if f.endswith(".json")]) == 3
