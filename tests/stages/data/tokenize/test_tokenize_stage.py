"""The tokenize stage: trained (BPE, Unigram), local and upstream
tokenizers; ids exactly as the course builds them; clear failures; a run
killed midway resumes."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from recipe_runner import TOKENIZER, Artifact, StageError
from recipe_runner.testing import run_stage
from recipe_runner_stages.data.tokenize.stage import TokenizeStage


@pytest.fixture(scope="module")
def docs(shakespeare_paragraphs, stdlib_sources) -> list[str]:
    return shakespeare_paragraphs[:600] + stdlib_sources[:6] + ["", "ünïcödé ✓ 漢字 emoji 🙂"]


def course_ids(tok, text: str) -> list[int]:
    """The course: ``tokenizer.encode(text)`` (the Llama tokenizer prepends
    BOS) then ``+ [tokenizer.eos_token_id]``."""
    return tok.encode(text) + [tok.eos_token_id]


def test_trained_bpe_tokenizer_and_course_ids(tmp_path, docs, save_texts, load_split):
    from transformers import AutoTokenizer

    art = save_texts(tmp_path / "in", docs[:-50], docs[-50:])
    r = run_stage(
        TokenizeStage,
        {"train": {"vocab_size": 400}, "batch_size": 64, "shard_size": 250},
        inputs={"dataset": art},
        workdir=tmp_path / "w",
    )
    tok_art, ds_art = r.outputs["tokenizer"], r.outputs["dataset"]
    tok = AutoTokenizer.from_pretrained(str(tok_art.path))
    assert len(tok) == 400 == tok_art.meta["vocab_size"]
    assert tok.bos_token_id == tok_art.meta["bos_token_id"] and tok.pad_token_id == tok_art.meta["pad_token_id"]
    assert tok("hello")["input_ids"][0] == tok.bos_token_id  # the saved tokenizer adds BOS like Llama's
    train = load_split(ds_art)
    assert train.column_names == ["input_ids", "num_tokens"]
    for text, ids, n in zip(docs[:-50], train["input_ids"], train["num_tokens"], strict=True):
        assert ids == course_ids(tok, text)
        assert n == len(ids)
    val = load_split(ds_art, "validation")
    assert [course_ids(tok, t) for t in docs[-50:]] == list(val["input_ids"])
    total = sum(len(course_ids(tok, t)) for t in docs)
    assert r.metrics["num_tokens"] == total == ds_art.meta["num_tokens"]
    assert tok.decode(train[0]["input_ids"], skip_special_tokens=True) == docs[0]  # byte-level: lossless


def test_unigram_training_and_no_specials(tmp_path, docs, save_texts, load_split):
    from transformers import AutoTokenizer

    art = save_texts(tmp_path / "in", docs[:300])
    r = run_stage(
        TokenizeStage,
        {"train": {"algorithm": "unigram", "vocab_size": 300}, "add_bos": False, "add_eos": False, "keep_text": True},
        inputs={"dataset": art},
        workdir=tmp_path / "w",
    )
    tok = AutoTokenizer.from_pretrained(str(r.outputs["tokenizer"].path))
    assert tok.backend_tokenizer.model.__class__.__name__ == "Unigram"
    train = load_split(r.outputs["dataset"])
    assert train.column_names == ["text", "input_ids", "num_tokens"]
    for text, ids in zip(train["text"], train["input_ids"], strict=True):
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) and ids[0] != tok.bos_token_id


def test_local_and_upstream_tokenizers(tmp_path, docs, tiny_tokenizer_dir, save_texts, load_split):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    art = save_texts(tmp_path / "in", docs[:100])
    expected = [
        [ref.bos_token_id] + ref(t, add_special_tokens=False)["input_ids"] + [ref.eos_token_id] for t in docs[:100]
    ]
    r = run_stage(
        TokenizeStage, {"tokenizer": str(tiny_tokenizer_dir)}, inputs={"dataset": art}, workdir=tmp_path / "local"
    )
    assert list(load_split(r.outputs["dataset"])["input_ids"]) == expected
    up = Artifact(TOKENIZER, tiny_tokenizer_dir, meta={})
    r2 = run_stage(TokenizeStage, {}, inputs={"dataset": art, "tokenizer": up}, workdir=tmp_path / "up")
    assert list(load_split(r2.outputs["dataset"])["input_ids"]) == expected
    assert r2.metrics["tokenizer"].startswith("upstream")
    saved = AutoTokenizer.from_pretrained(str(r2.outputs["tokenizer"].path))
    assert saved.get_vocab() == ref.get_vocab()


def test_hub_tokenizer_offline_fails_at_once(tmp_path, docs, monkeypatch, save_texts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    art = save_texts(tmp_path / "in", docs[:10])
    t = time.perf_counter()
    with pytest.raises(StageError, match="upstage/SOLAR-10.7B-v1.0.*offline"):
        run_stage(
            TokenizeStage, {"tokenizer": "upstage/SOLAR-10.7B-v1.0"}, inputs={"dataset": art}, workdir=tmp_path / "w"
        )
    assert time.perf_counter() - t < 30


def test_tokenizer_without_bos_is_a_clear_error(tmp_path, docs, save_texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]").save_pretrained(str(tmp_path / "tok"))
    art = save_texts(tmp_path / "in", docs[:5])
    with pytest.raises(StageError, match="no BOS token; set add_bos: false"):
        run_stage(TokenizeStage, {"tokenizer": str(tmp_path / "tok")}, inputs={"dataset": art}, workdir=tmp_path / "w")


RUNNER = textwrap.dedent("""
    import sys
    from recipe_runner.artifacts import Artifact
    from recipe_runner.testing import run_stage
    from recipe_runner_stages.data.tokenize.stage import TokenizeStage
    r = run_stage(TokenizeStage, {"tokenizer": sys.argv[1], "shard_size": 150, "batch_size": 50},
                  inputs={"dataset": Artifact("dataset", sys.argv[2])}, workdir=sys.argv[3])
    print("DONE", r.metrics["shards_computed"])
""")


def test_tokenize_killed_midway_resumes(
    tmp_path, shakespeare_paragraphs, stdlib_sources, tiny_tokenizer_dir, save_texts, load_split, kill_after_shards
):
    docs = shakespeare_paragraphs[:1200] + stdlib_sources * 3
    art = save_texts(tmp_path / "in", docs)
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    work = tmp_path / "w"
    shards = work / "checkpoint" / "tokenize-shards"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(script), str(tiny_tokenizer_dir), str(art.path), str(work)]
    done_before, killed = kill_after_shards(cmd, shards, env=env)
    assert done_before >= 2
    r = run_stage(
        TokenizeStage,
        {"tokenizer": str(tiny_tokenizer_dir), "shard_size": 150, "batch_size": 50},
        inputs={"dataset": Artifact("dataset", art.path)},
        workdir=work,
    )
    n_shards = -(-len(docs) // 150)
    assert r.metrics["shards_reused"] >= done_before and r.metrics["shards_reused"] >= 2
    assert r.metrics["shards_reused"] + r.metrics["shards_computed"] == n_shards
    if killed:
        assert r.metrics["shards_computed"] >= 1
    clean = run_stage(
        TokenizeStage,
        {"tokenizer": str(tiny_tokenizer_dir), "shard_size": 150, "batch_size": 50},
        inputs={"dataset": Artifact("dataset", art.path)},
        workdir=tmp_path / "clean",
    )
    assert list(load_split(r.outputs["dataset"])["input_ids"]) == list(
        load_split(clean.outputs["dataset"])["input_ids"]
    )
    assert r.metrics["num_tokens"] == clean.metrics["num_tokens"]


def test_the_tokenized_dataset_declares_whether_documents_are_separated():
    from recipe_runner import DOCUMENT_SEPARATOR
    from recipe_runner_stages.data.tokenize.stage import TokenizeParams

    def separated(**params) -> bool:
        return TokenizeStage.output_facts(TokenizeParams(**params), {})["dataset"][DOCUMENT_SEPARATOR]

    assert separated() and separated(add_bos=False) and separated(add_eos=False)
    assert not separated(add_bos=False, add_eos=False)


def test_both_outputs_record_the_digest_of_the_tokenizer_that_made_the_ids(
    tmp_path, docs, tiny_tokenizer_dir, save_texts
):
    """The digest in the outputs' meta is the behaviour of the saved tokenizer: a local one keeps its
    digest through the stage's save_pretrained, a trained one has its own."""
    from recipe_runner_stages.common.models import load_tokenizer
    from recipe_runner_stages.common.tokenizer_digest import TOKENIZER_DIGEST, tokenizer_digest

    art = save_texts(tmp_path / "in", docs[:60])
    local = run_stage(
        TokenizeStage, {"tokenizer": str(tiny_tokenizer_dir)}, inputs={"dataset": art}, workdir=tmp_path / "l"
    )
    digest = tokenizer_digest(load_tokenizer(tiny_tokenizer_dir))
    assert (
        local.outputs["dataset"].meta[TOKENIZER_DIGEST] == local.outputs["tokenizer"].meta[TOKENIZER_DIGEST] == digest
    )
    assert tokenizer_digest(load_tokenizer(local.outputs["tokenizer"].path)) == digest

    trained = run_stage(TokenizeStage, {"train": {"vocab_size": 300}}, inputs={"dataset": art}, workdir=tmp_path / "t")
    own = trained.outputs["dataset"].meta[TOKENIZER_DIGEST]
    assert own == tokenizer_digest(load_tokenizer(trained.outputs["tokenizer"].path)) != digest
