"""The pack stage against the course's packing and the workshop's
GPTDatasetV1, and the document-aware modes' invariants."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_runner import TOKENIZED_DATASET, Artifact, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.pack.stage import PackStage


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, shakespeare_paragraphs, stdlib_sources, tiny_tokenizer_dir) -> Artifact:
    """Real documents tokenized as the course does: BOS + ids + EOS."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    docs = shakespeare_paragraphs[:700] + stdlib_sources[:4]
    ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in docs]
    val = ids[:40]
    path = tmp_path_factory.mktemp("tokenized") / "ds"
    DatasetDict(
        {
            "train": Dataset.from_dict({"input_ids": ids[40:], "num_tokens": [len(x) for x in ids[40:]]}),
            "validation": Dataset.from_dict({"input_ids": val, "num_tokens": [len(x) for x in val]}),
        }
    ).save_to_disk(str(path))
    return Artifact(
        TOKENIZED_DATASET,
        path,
        meta={
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "vocab_size": len(tok),
        },
    )


@pytest.fixture(scope="module")
def docs_of(load_split):
    """``docs_of(artifact, split="train")``: the token ids of each document (or row)."""

    def docs(art: Artifact, split: str = "train") -> list[list[int]]:
        return list(load_split(art, split)["input_ids"])

    return docs


def course_pack(input_ids_per_doc, max_seq_length):
    """Lesson 3 of the course, verbatim but for the input."""
    input_ids = np.concatenate(input_ids_per_doc)
    total_length = len(input_ids) - len(input_ids) % max_seq_length
    input_ids = input_ids[:total_length]
    input_ids_reshaped = input_ids.reshape(-1, max_seq_length).astype(np.int32)
    return input_ids_reshaped.tolist()


def pack(tmp_path, art, name, **params):
    r = run_stage(PackStage, params, inputs={"dataset": art}, workdir=tmp_path / name)
    return r


def test_concat_is_the_courses_packing(tmp_path, tokenized, load_split, docs_of):
    # small batches and shards: the carry between them must not change anything
    r = pack(
        tmp_path, tokenized, "c", mode="concat", max_seq_length=32, batch_size=7, shard_size=50, export_parquet=True
    )
    out = r.outputs["dataset"]
    assert out.meta["max_seq_length"] == 32
    assert list(load_split(out)["input_ids"]) == course_pack(docs_of(tokenized), 32)
    assert list(load_split(out, "validation")["input_ids"]) == course_pack(docs_of(tokenized, "validation"), 32)
    total = sum(map(len, docs_of(tokenized)))
    assert r.metrics["train_tokens_dropped"] == total % 32
    import pandas as pd

    pq = pd.read_parquet(out.path / "parquet" / "train.parquet")
    assert [list(x) for x in pq["input_ids"]] == course_pack(docs_of(tokenized), 32)


def test_document_mode_positions_restart_per_document(tmp_path, tokenized, load_split, docs_of):
    L = 64
    r = pack(tmp_path, tokenized, "d", mode="document", max_seq_length=L, batch_size=13, shard_size=100)
    ds = load_split(r.outputs["dataset"])
    assert ds.column_names == ["input_ids", "position_ids", "labels"]
    rows = np.array(ds["input_ids"])
    assert rows.tolist() == course_pack(docs_of(tokenized), L)  # same rows as concat
    # expected positions, built document by document
    flat_pos, flat_start = [], []
    for d in docs_of(tokenized):
        flat_pos += list(range(len(d)))
        flat_start += [True] + [False] * (len(d) - 1)
    n = rows.size
    pos = np.array(flat_pos[:n]).reshape(-1, L)
    start = np.array(flat_start[:n]).reshape(-1, L)
    # a document continued from the previous row restarts at 0 in the new row
    expected = np.zeros_like(pos)
    for i in range(pos.shape[0]):
        for j in range(L):
            expected[i, j] = 0 if (j == 0 or start[i, j]) else expected[i, j - 1] + 1
    assert np.array_equal(np.array(ds["position_ids"]), expected)
    labels = np.array(ds["labels"])
    assert np.array_equal(labels[start], np.full(start.sum(), -100))
    assert np.array_equal(labels[~start], rows[~start])


def test_bfd_packs_whole_documents_with_padding(tmp_path, tokenized, load_split, docs_of):
    L = 128
    r = pack(tmp_path, tokenized, "b", mode="bfd", max_seq_length=L, batch_size=300, attention_mask=True)
    ds = load_split(r.outputs["dataset"])
    assert ds.column_names == ["input_ids", "labels", "position_ids", "attention_mask"]
    pad = tokenized.meta["pad_token_id"]
    ids = np.array(ds["input_ids"])
    mask = np.array(ds["attention_mask"]).astype(bool)
    labels = np.array(ds["labels"])
    pos = np.array(ds["position_ids"])
    assert ids.shape[1] == L
    assert (ids[~mask] == pad).all() and (labels[~mask] == -100).all()
    # every row is real tokens then padding, and the padding is a position run of its own
    assert all(np.all(np.diff(m.astype(int)) <= 0) for m in mask)
    for m, p in zip(mask, pos, strict=True):
        assert list(p[~m]) == list(range((~m).sum()))
    # cut each row at position-id restarts: the pieces are exactly the documents (split at L when longer)
    pieces = []
    for row, m, p in zip(ids, mask, pos, strict=True):
        real, rp = row[m], p[m]
        starts = list(np.flatnonzero(rp == 0)) + [len(real)]
        pieces += [tuple(real[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    expected = []
    for d in docs_of(tokenized):
        expected += [tuple(d[i : i + L]) for i in range(0, len(d), L)]
    assert sorted(pieces) == sorted(expected)
    pad_frac = (~mask).sum() / mask.size
    assert r.metrics["train_padding_fraction"] == pytest.approx(pad_frac, abs=1e-6)
    assert pad_frac < 0.1  # best fit leaves little room
    starts = (pos == 0) & mask
    assert (labels[starts] == -100).all() and (labels[mask & ~starts] == ids[mask & ~starts]).all()
    # the default leaves the mask out, everything else the same
    r2 = pack(tmp_path, tokenized, "b2", mode="bfd", max_seq_length=L, batch_size=300)
    ds2 = load_split(r2.outputs["dataset"])
    assert ds2.column_names == ["input_ids", "labels", "position_ids"]
    assert np.array_equal(np.array(ds2["input_ids"]), ids) and np.array_equal(np.array(ds2["position_ids"]), pos)


@pytest.mark.parametrize("mode", ["document", "bfd"])
def test_packed_documents_do_not_attend_to_each_other(tmp_path, tokenized, tiny_model_dir, mode, load_split):
    """With the rows' position_ids (and no KV cache, as in training), a tiny
    Llama gives every packed piece the logits it gets alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    r = pack(tmp_path, tokenized, mode, mode=mode, max_seq_length=96, batch_size=200)
    ds = load_split(r.outputs["dataset"])
    checked = 0
    pos_all = np.array(ds["position_ids"])
    several = [i for i, p in enumerate(pos_all) if (p == 0).sum() >= 3][:4]  # rows holding several pieces
    assert len(several) == 4
    for row in ds.select(several):
        ids = torch.tensor([row["input_ids"]])
        pos = torch.tensor([row["position_ids"]])
        with torch.no_grad():
            packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        starts = list(np.flatnonzero(np.array(row["position_ids"]) == 0)) + [ids.shape[1]]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            with torch.no_grad():
                alone = model(input_ids=ids[:, a:b], use_cache=False).logits[0]
            assert torch.allclose(packed[a:b], alone, atol=1e-4), (a, b)
            checked += 1
    assert checked >= 12


def gpt_dataset_v1(token_ids, max_length, stride):
    """The LLM workshop's GPTDatasetV1 (without torch): input/target pairs."""
    input_ids, target_ids = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        input_chunk = token_ids[i : i + max_length]
        target_chunk = token_ids[i + 1 : i + max_length + 1]
        input_ids.append(input_chunk)
        target_ids.append(target_chunk)
    return input_ids, target_ids


@pytest.mark.parametrize("max_length,stride", [(32, 32), (32, 8), (16, 40)])
def test_sliding_windows_are_the_workshops_pairs(tmp_path, tokenized, max_length, stride, load_split, docs_of):
    r = pack(
        tmp_path,
        tokenized,
        f"s{max_length}-{stride}",
        mode="sliding",
        max_seq_length=max_length + 1,
        stride=stride,
        batch_size=11,
        shard_size=90,
    )
    rows = list(load_split(r.outputs["dataset"])["input_ids"])
    stream = [t for d in docs_of(tokenized) for t in d]
    inputs, targets = gpt_dataset_v1(stream, max_length, stride)
    assert [row[:-1] for row in rows] == inputs
    assert [row[1:] for row in rows] == targets


def test_too_short_splits(tmp_path, tokenized, docs_of):
    total_val = sum(map(len, docs_of(tokenized, "validation")))
    r = pack(tmp_path, tokenized, "v", mode="concat", max_seq_length=total_val + 1)
    assert r.metrics["validation_left_out"] == 1
    from datasets import load_from_disk

    assert list(load_from_disk(str(r.outputs["dataset"].path)).keys()) == ["train"]
    with pytest.raises(StageError, match="fewer than one row"):
        pack(tmp_path, tokenized, "t", mode="concat", max_seq_length=10**7)


def test_stride_only_for_sliding():
    from pydantic import ValidationError

    from recipe_runner_stages.data.pack.stage import PackParams

    with pytest.raises(ValidationError):
        PackParams(mode="concat", stride=4)


def test_packed_rows_declare_their_length_at_plan_time():
    from recipe_runner import SEQ_LENGTH
    from recipe_runner_stages.data.pack.stage import PackParams

    facts = PackStage.output_facts(PackParams(max_seq_length=96), {"dataset": {}})
    assert facts == {"dataset": {SEQ_LENGTH: 96}}


def test_document_modes_need_a_separator_token_at_validate_time(tmp_path, data_dir):
    """pack asks its input for the DOCUMENT_SEPARATOR fact, which tokenize
    declares: a tokenize stage adding neither BOS nor EOS fails validation of
    a document-aware pack mode, and only of those."""
    import subprocess
    import sys

    def validate(tokenize: str, mode: str) -> subprocess.CompletedProcess:
        recipe = tmp_path / f"{mode}.yaml"
        recipe.write_text(
            "name: facts\nstages:\n"
            f"  - {{type: source, params: {{sources: [{{path: '{data_dir / 'the-verdict.txt'}'}}]}}}}\n"
            f"  - {{type: tokenize, params: {tokenize}}}\n"
            f"  - {{type: pack, params: {{mode: {mode}}}}}\n"
        )
        return subprocess.run(
            [sys.executable, "-m", "recipe_runner.cli", "validate", str(recipe)], capture_output=True, text=True
        )

    bare = "{add_bos: false, add_eos: false}"
    for mode in ("document", "bfd"):
        proc = validate(bare, mode)
        assert proc.returncode == 2
        assert (
            f"stage 'pack': pack mode '{mode}': the tokenize stage adds neither BOS nor EOS, so packed documents "
            "run together with no separator token" in proc.stderr
        )
    assert validate(bare, "concat").returncode == 0
    assert validate("{add_bos: false}", "document").returncode == 0


def test_the_tokenizer_digest_is_passed_on(tmp_path, tokenized):
    from recipe_runner_stages.common.tokenizer_digest import TOKENIZER_DIGEST

    with_digest = Artifact(TOKENIZED_DATASET, tokenized.path, meta={**tokenized.meta, TOKENIZER_DIGEST: "ab" * 16})
    assert pack(tmp_path, with_digest, "d", max_seq_length=32).outputs["dataset"].meta[TOKENIZER_DIGEST] == "ab" * 16
    assert TOKENIZER_DIGEST not in pack(tmp_path, tokenized, "n", max_seq_length=32).outputs["dataset"].meta
