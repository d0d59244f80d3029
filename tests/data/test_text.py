"""Text corpus data: documents, deterministic splits, BPE on the training split, memory-mapped token cache."""
from __future__ import annotations

import numpy as np
import pytest

from mmzoo.data import TextCorpusDataModule
from mmzoo.data import text as text_mod
from mmzoo.data.tokenizer import ByteBPETokenizer

PARAGRAPH = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
             "Return the value of the named attribute of the object.")


def _write_corpus(root, n_files=12):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        paras = [f"{PARAGRAPH} File {i} paragraph {j}, with the number {i * 7 + j}." for j in range(30)]
        (root / f"doc{i:02d}.txt").write_text("\n\n".join(paras), encoding="utf-8")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "more.txt").write_text("Nested files are read too.\n\n" + PARAGRAPH, encoding="utf-8")
    (root / "broken.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \x80\x81")
    return root


def _dm(root, cache, **kw):
    return TextCorpusDataModule(root=str(root), context_length=32, vocab_size=400, num_sentinels=4,
                                val_percent=15, test_percent=15, chunk_chars=600, cache_dir=str(cache),
                                batch_size=4, **kw)


def test_text_files_blocks_tokenizer_and_cache(tmp_path, monkeypatch):
    root = _write_corpus(tmp_path / "texts")
    dm = _dm(root, tmp_path / "cache")
    with pytest.warns(UserWarning, match=r"broken\.txt: not UTF-8 text \(byte 0xff on line 1\)"):
        dm.setup("fit")
    assert dm.skipped_files == [str(root / "broken.txt")]
    tok = dm.tokenizer
    assert dm.vocab_size == tok.vocab_size <= 400
    assert tok.eot_token_id == tok.vocab_size - 1  # EOT keeps the largest id
    assert dm.mask_token_id in tok.special_ids.values() and len(dm.sentinel_token_ids) == 4
    block = dm.train_set[0]["tokens"]
    assert block.shape == (32,) and block.dtype.is_floating_point is False
    train = dm.split_tokens("train")
    assert isinstance(train, np.memmap)
    # the tokens decode back to the training documents, separated by EOT
    docs, _ = text_mod.text_file_documents(root, chunk_chars=600)
    train_docs = [t for n, t in docs if text_mod.split_of(n, 15, 15) == "train"]
    assert tok.decode(np.asarray(train).tolist()) == "".join(d + "<end_of_text>" for d in train_docs)
    assert len(dm.train_set) == len(train) // 32 and len(dm.val_set) >= 1 and len(dm.test_set) >= 1
    counts = dm.unigram_counts()
    assert int(counts.sum()) == len(train) and counts.shape == (tok.vocab_size,)

    # a second run reuses the cached BPE and token arrays: no training, no tokenizing
    def boom(*a, **k):
        raise AssertionError("re-trained or re-tokenized despite the cache")

    monkeypatch.setattr(ByteBPETokenizer, "train", classmethod(boom))
    monkeypatch.setattr(ByteBPETokenizer, "encode", boom)
    again = _dm(root, tmp_path / "cache")
    again.setup("fit")
    assert np.array_equal(again.split_tokens("val"), dm.split_tokens("val"))


def test_splits_are_by_document_name_and_stable(tmp_path):
    names = [f"doc{i}.txt#{j}" for i in range(50) for j in range(3)]
    splits = [text_mod.split_of(n, 10, 10) for n in names]
    assert splits == [text_mod.split_of(n, 10, 10) for n in names]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.7 < share["train"] < 0.9 and share["val"] > 0.03 and share["test"] > 0.03


def test_strict_and_missing_inputs_name_the_problem(tmp_path):
    root = _write_corpus(tmp_path / "texts")
    with pytest.raises(ValueError, match="broken.txt"):
        _dm(root, tmp_path / "c", strict=True).setup("fit")
    with pytest.raises(ValueError, match=r"1 of the 14 text files .*max_bad_fraction=0\.05"), pytest.warns(UserWarning):
        _dm(root, tmp_path / "c", max_bad_fraction=0.05).setup("fit")  # one bad file in 14: over a 5% cap
    with pytest.raises(FileNotFoundError, match="data.root"):
        _dm(tmp_path / "nope", tmp_path / "c").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"\*.md"):
        _dm(root, tmp_path / "c", pattern="*.md").setup("fit")


def test_stdlib_docstrings_are_english_and_deterministic():
    docs = text_mod.stdlib_docstrings(max_documents=40)
    assert len(docs) == 40 and docs == text_mod.stdlib_docstrings(max_documents=40)
    text = " ".join(t for _, t in docs)
    assert sum(text.count(w) for w in (" the ", " of ", " a ", " is ")) > 50
    assert all(":" in name for name, _ in docs)
