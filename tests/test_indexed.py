"""MMIDIDX reader/builder: byte format from the spec, validation messages, atomicity, Megatron interop."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from megamix.data.indexed import IndexedDataset, IndexedDatasetBuilder, dtype_for_vocab

DOCS = [[5, 6, 7], [1], [], [65000, 2, 3, 4, 9]]


def _spec_write(prefix, docs, code=8, fmt="H", version=1, magic=b"MMIDIDX\x00\x00"):
    """Write a dataset straight from the spec with struct (one sequence per document)."""
    size = struct.calcsize("<" + fmt)
    lengths = [len(d) for d in docs]
    pointers, pos = [], 0
    for n in lengths:
        pointers.append(pos)
        pos += n * size
    doc_idx = list(range(len(docs) + 1))
    with open(prefix + ".idx", "wb") as f:
        f.write(magic + struct.pack("<Q", version) + struct.pack("<B", code))
        f.write(struct.pack("<QQ", len(lengths), len(doc_idx)))
        f.write(struct.pack(f"<{len(lengths)}i", *lengths))
        f.write(struct.pack(f"<{len(pointers)}q", *pointers))
        f.write(struct.pack(f"<{len(doc_idx)}q", *doc_idx))
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(struct.pack(f"<{len(d)}{fmt}", *d))


def _spec_read(prefix):
    """Read a dataset straight from the spec with struct; returns (dtype code, sequences, doc indices)."""
    raw = open(prefix + ".idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n, d = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    lengths = struct.unpack_from(f"<{n}i", raw, 34)
    pointers = struct.unpack_from(f"<{n}q", raw, 34 + 4 * n)
    doc_idx = struct.unpack_from(f"<{d}q", raw, 34 + 12 * n)
    assert len(raw) == 34 + 12 * n + 8 * d
    fmt = {1: "B", 2: "b", 3: "h", 4: "i", 5: "q", 6: "d", 7: "f", 8: "H"}[code]
    size = struct.calcsize(fmt)
    data = open(prefix + ".bin", "rb").read()
    seqs = [list(struct.unpack_from(f"<{ln}{fmt}", data, p)) for ln, p in zip(lengths, pointers)]
    assert sum(lengths) * size == len(data)
    return code, seqs, list(doc_idx)


def _build(prefix, docs, dtype=np.uint16):
    with IndexedDatasetBuilder(str(prefix), dtype) as b:
        for d in docs:
            b.add_document(d)
    return str(prefix)


def test_reads_spec_fixture(tmp_path):
    prefix = str(tmp_path / "spec")
    _spec_write(prefix, DOCS)
    ds = IndexedDataset(prefix)
    assert len(ds) == 4 and ds.dtype == np.uint16 and ds.num_tokens == 9
    assert [d.tolist() for d in ds[:]] == DOCS
    assert ds.document_indices.tolist() == [0, 1, 2, 3, 4]
    assert ds.sequence_lengths.dtype == np.int32 and ds.sequence_pointers.dtype == np.int64
    assert ds.sequence_pointers.tolist() == [0, 6, 8, 8]
    assert ds.get(3, 1, 2).tolist() == [2, 3] and ds.get(3, 2).tolist() == [3, 4, 9]
    assert ds[-1].tolist() == DOCS[-1]
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(IndexError):
        ds.get(0, 1, 5)


def test_spec_reader_reads_builder_output(tmp_path):
    prefix = str(tmp_path / "ours")
    with IndexedDatasetBuilder(prefix, np.int32) as b:
        b.add_item([1, 2])
        b.add_item([70000])
        b.end_document()
        b.add_document([3])
    code, seqs, doc_idx = _spec_read(prefix)
    assert code == 4 and seqs == [[1, 2], [70000], [3]] and doc_idx == [0, 2, 3]
    assert IndexedDataset(prefix).document_indices.tolist() == [0, 2, 3]


def test_items_are_views_not_copies(tmp_path):
    ds = IndexedDataset(_build(tmp_path / "v", DOCS))
    item = ds[0]
    assert not item.flags.owndata and not item.flags.writeable


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64, np.uint16])
def test_round_trip_every_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 100, size=int(rng.integers(0, 50))).astype(dtype) for _ in range(30)]
    ds = IndexedDataset(_build(tmp_path / "rt", docs, dtype))
    assert ds.dtype == np.dtype(dtype) and len(ds) == 30
    for a, b in zip(docs, ds[:]):
        np.testing.assert_array_equal(a, b)


def test_dtype_for_vocab():
    assert dtype_for_vocab(65499) == np.uint16
    assert dtype_for_vocab(65500) == np.int32
    assert dtype_for_vocab(32000) == np.uint16
    with pytest.raises(ValueError, match="vocab_size"):
        dtype_for_vocab(0)


def test_builder_rejects_tokens_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="do not fit dtype uint16"):
        with IndexedDatasetBuilder(str(tmp_path / "x"), np.uint16) as b:
            b.add_document(np.array([70000], dtype=np.int64))
    assert os.listdir(tmp_path) == []


def test_builder_context_aborts_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with IndexedDatasetBuilder(str(tmp_path / "x"), np.uint16) as b:
            b.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_builder_overwrites_old_pair_and_temporaries_vanish(tmp_path):
    prefix = _build(tmp_path / "x", [[1, 2, 3]] * 10)
    _build(tmp_path / "x", [[9]])
    assert sorted(os.listdir(tmp_path)) == ["x.bin", "x.idx"]
    assert [d.tolist() for d in IndexedDataset(prefix)[:]] == [[9]]
    assert IndexedDataset.exists(prefix) and not IndexedDataset.exists(str(tmp_path / "y"))


def test_builder_growth_many_docs(tmp_path):
    docs = [[i % 300] * (i % 5) for i in range(5000)]
    ds = IndexedDataset(_build(tmp_path / "g", docs))
    assert len(ds) == 5000 and ds.num_documents == 5000
    assert ds[4999].tolist() == docs[4999] and ds[1234].tolist() == docs[1234]


def test_add_index_merges_and_checks_dtype(tmp_path):
    a = _build(tmp_path / "a", [[1, 2], [3]])
    b = str(tmp_path / "b")
    with IndexedDatasetBuilder(b, np.uint16) as bb:
        bb.add_item([4])
        bb.add_item([5])
        bb.end_document()
    with IndexedDatasetBuilder(str(tmp_path / "m"), np.uint16) as m:
        m.add_index(a)
        m.add_index(b)
    ds = IndexedDataset(str(tmp_path / "m"))
    assert [d.tolist() for d in ds[:]] == [[1, 2], [3], [4], [5]]
    assert ds.document_indices.tolist() == [0, 1, 2, 4]
    c = _build(tmp_path / "c", [[1]], np.int32)
    with pytest.raises(ValueError, match="dtype int32 differs"):
        with IndexedDatasetBuilder(str(tmp_path / "m2"), np.uint16) as m:
            m.add_index(c)
    assert not IndexedDataset.exists(str(tmp_path / "m2"))


# ------------------------------------------------------------------ validation errors
def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def good(tmp_path):
    prefix = str(tmp_path / "good")
    _spec_write(prefix, DOCS)
    return prefix


def test_missing_files(good):
    os.remove(good + ".bin")
    with pytest.raises(FileNotFoundError, match=r"good\.bin"):
        IndexedDataset(good)
    with pytest.raises(FileNotFoundError, match=r"nothere\.idx"):
        IndexedDataset(good + "nothere")


def test_bad_magic(good):
    _patch(good + ".idx", 0, b"XXXX")
    with pytest.raises(ValueError, match=r"good\.idx: bad magic"):
        IndexedDataset(good)


def test_wrong_version(good):
    _patch(good + ".idx", 9, struct.pack("<Q", 2))
    with pytest.raises(ValueError, match="version: expected 1, found 2"):
        IndexedDataset(good)


def test_unknown_dtype_code(good):
    _patch(good + ".idx", 17, struct.pack("<B", 9))
    with pytest.raises(ValueError, match="unknown dtype code.*found 9"):
        IndexedDataset(good)


def test_truncated_index(good):
    with open(good + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(good + ".idx") - 8)
    with pytest.raises(ValueError, match="truncated index"):
        IndexedDataset(good)
    with open(good + ".idx", "r+b") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match="truncated index: header"):
        IndexedDataset(good)


def _doc_offset(n=4):
    return 34 + 12 * n


def test_document_indices_not_starting_at_zero(good):
    _patch(good + ".idx", _doc_offset(), struct.pack("<q", 1))
    with pytest.raises(ValueError, match=r"document_indices\[0\] must be 0, found 1"):
        IndexedDataset(good)


def test_document_indices_decreasing(good):
    _patch(good + ".idx", _doc_offset() + 16, struct.pack("<q", 0))
    with pytest.raises(ValueError, match="document_indices not non-decreasing"):
        IndexedDataset(good)


def test_document_indices_not_ending_at_count(good):
    _patch(good + ".idx", _doc_offset() + 32, struct.pack("<q", 3))
    with pytest.raises(ValueError, match="document_indices must end at the sequence count 4, found 3"):
        IndexedDataset(good)


def test_pointers_inconsistent(good):
    _patch(good + ".idx", 34 + 16 + 8, struct.pack("<q", 7))
    with pytest.raises(ValueError, match=r"sequence_pointers.*\[1\] expected 6, found 7"):
        IndexedDataset(good)


def test_negative_length(good):
    _patch(good + ".idx", 34, struct.pack("<i", -1))
    with pytest.raises(ValueError, match=r"sequence_lengths\[0\] is -1"):
        IndexedDataset(good)


def test_bin_size_mismatch(good):
    with open(good + ".bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(ValueError, match=r"good\.bin: size mismatch.*18 bytes expected, file has 20"):
        IndexedDataset(good)


# ------------------------------------------------------------------ Megatron-LM interop
def test_megatron_core_reads_ours_and_we_read_theirs(tmp_path):
    mcore = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    torch = pytest.importorskip("torch")
    ours = str(tmp_path / "ours")
    with IndexedDatasetBuilder(ours, np.uint16) as b:
        b.add_item([1, 2, 3])
        b.add_item([4])
        b.end_document()
        b.add_document([65000, 7])
    theirs = mcore.IndexedDataset(ours)
    assert len(theirs) == 3
    assert theirs[0].tolist() == [1, 2, 3] and theirs[2].tolist() == [65000, 7]
    assert theirs.document_indices.tolist() == [0, 2, 3]
    assert theirs.get(2, offset=1, length=1).tolist() == [7]

    prefix = str(tmp_path / "theirs")
    builder = mcore.IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    builder.add_item(torch.tensor([10, 11]))
    builder.add_item(torch.tensor([70000]))
    builder.end_document()
    builder.add_document(torch.tensor([5, 6, 7]), [3])
    builder.finalize(prefix + ".idx")
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.int32
    assert [d.tolist() for d in ds[:]] == [[10, 11], [70000], [5, 6, 7]]
    assert ds.document_indices.tolist() == [0, 2, 3]


def test_add_documents_bulk_matches_one_by_one(tmp_path):
    docs = [[1, 2], [], [3, 4, 5], [6]]
    one = _build(tmp_path / "one", docs)
    bulk = str(tmp_path / "bulk")
    with IndexedDatasetBuilder(bulk, np.uint16) as b:
        b.add_documents(np.array([1, 2], dtype=np.int64), np.array([2, 0]))
        b.add_documents(np.array([3, 4, 5, 6]), np.array([3, 1]))
    for ext in (".idx", ".bin"):
        assert open(one + ext, "rb").read() == open(bulk + ext, "rb").read()
    with pytest.raises(ValueError, match="sum to the 2 tokens"):
        with IndexedDatasetBuilder(str(tmp_path / "bad"), np.uint16) as b:
            b.add_documents(np.array([1, 2]), np.array([3]))
    with pytest.raises(RuntimeError, match="end_document"):
        with IndexedDatasetBuilder(str(tmp_path / "open"), np.uint16) as b:
            b.add_item([1])
            b.add_documents(np.array([2]), np.array([1]))
