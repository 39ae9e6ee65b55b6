"""The tokenize stage: trained (BPE, Unigram), local and upstream
tokenizers; ids exactly as the course builds them; clear failures."""
from __future__ import annotations

import time

import pytest

from recipe_runner.artifacts import TOKENIZER, Artifact
from recipe_runner.stage import StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.tokenize import TokenizeStage

from data_stage_helpers import load_split, save_texts


@pytest.fixture(scope="module")
def docs(shakespeare_paragraphs, stdlib_sources) -> list[str]:
    return shakespeare_paragraphs[:600] + stdlib_sources[:6] + ["", "ünïcödé ✓ 漢字 emoji 🙂"]


def course_ids(tok, text: str) -> list[int]:
    """The course: ``tokenizer.encode(text)`` (the Llama tokenizer prepends
    BOS) then ``+ [tokenizer.eos_token_id]``."""
    return tok.encode(text) + [tok.eos_token_id]


def test_trained_bpe_tokenizer_and_course_ids(tmp_path, docs):
    from transformers import AutoTokenizer

    art = save_texts(tmp_path / "in", docs[:-50], docs[-50:])
    r = run_stage(TokenizeStage, {"train": {"vocab_size": 400}, "batch_size": 64, "shard_size": 250},
                  inputs={"dataset": art}, workdir=tmp_path / "w")
    tok_art, ds_art = r.outputs["tokenizer"], r.outputs["dataset"]
    tok = AutoTokenizer.from_pretrained(str(tok_art.path))
    assert len(tok) == 400 == tok_art.meta["vocab_size"]
    assert tok.bos_token_id == tok_art.meta["bos_token_id"] and tok.pad_token_id == tok_art.meta["pad_token_id"]
    assert tok("hello")["input_ids"][0] == tok.bos_token_id  # the saved tokenizer adds BOS like Llama's
    train = load_split(ds_art)
    assert train.column_names == ["input_ids", "num_tokens"]
    for text, ids, n in zip(docs[:-50], train["input_ids"], train["num_tokens"]):
        assert ids == course_ids(tok, text)
        assert n == len(ids)
    val = load_split(ds_art, "validation")
    assert [course_ids(tok, t) for t in docs[-50:]] == list(val["input_ids"])
    total = sum(len(course_ids(tok, t)) for t in docs)
    assert r.metrics["num_tokens"] == total == ds_art.meta["num_tokens"]
    assert tok.decode(train[0]["input_ids"], skip_special_tokens=True) == docs[0]  # byte-level: lossless


def test_unigram_training_and_no_specials(tmp_path, docs):
    from transformers import AutoTokenizer

    art = save_texts(tmp_path / "in", docs[:300])
    r = run_stage(TokenizeStage, {"train": {"algorithm": "unigram", "vocab_size": 300}, "add_bos": False,
                                  "add_eos": False, "keep_text": True},
                  inputs={"dataset": art}, workdir=tmp_path / "w")
    tok = AutoTokenizer.from_pretrained(str(r.outputs["tokenizer"].path))
    assert tok.backend_tokenizer.model.__class__.__name__ == "Unigram"
    train = load_split(r.outputs["dataset"])
    assert train.column_names == ["text", "input_ids", "num_tokens"]
    for text, ids in zip(train["text"], train["input_ids"]):
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) and ids[0] != tok.bos_token_id


def test_local_and_upstream_tokenizers(tmp_path, docs, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    art = save_texts(tmp_path / "in", docs[:100])
    expected = [[ref.bos_token_id] + ref(t, add_special_tokens=False)["input_ids"] + [ref.eos_token_id]
                for t in docs[:100]]
    r = run_stage(TokenizeStage, {"tokenizer": str(tiny_tokenizer_dir)}, inputs={"dataset": art},
                  workdir=tmp_path / "local")
    assert list(load_split(r.outputs["dataset"])["input_ids"]) == expected
    up = Artifact(TOKENIZER, tiny_tokenizer_dir, meta={})
    r2 = run_stage(TokenizeStage, {}, inputs={"dataset": art, "tokenizer": up}, workdir=tmp_path / "up")
    assert list(load_split(r2.outputs["dataset"])["input_ids"]) == expected
    assert r2.metrics["tokenizer"].startswith("upstream")
    saved = AutoTokenizer.from_pretrained(str(r2.outputs["tokenizer"].path))
    assert saved.get_vocab() == ref.get_vocab()


def test_hub_tokenizer_offline_fails_at_once(tmp_path, docs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    art = save_texts(tmp_path / "in", docs[:10])
    t = time.perf_counter()
    with pytest.raises(StageError, match="upstage/SOLAR-10.7B-v1.0.*offline"):
        run_stage(TokenizeStage, {"tokenizer": "upstage/SOLAR-10.7B-v1.0"}, inputs={"dataset": art},
                  workdir=tmp_path / "w")
    assert time.perf_counter() - t < 30


def test_tokenizer_without_bos_is_a_clear_error(tmp_path, docs):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]").save_pretrained(str(tmp_path / "tok"))
    art = save_texts(tmp_path / "in", docs[:5])
    with pytest.raises(StageError, match="no BOS token; set add_bos: false"):
        run_stage(TokenizeStage, {"tokenizer": str(tmp_path / "tok")}, inputs={"dataset": art},
                  workdir=tmp_path / "w")
