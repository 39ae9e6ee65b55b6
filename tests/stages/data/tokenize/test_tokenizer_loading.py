"""Loading a local tokenizer directory without AutoTokenizer's machinery (which imports torch):
the same tokenizer as AutoTokenizer's, saved to the same bytes, and torch is never imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipe_runner_stages.data.tokenize.tokenizer import (
    TrainTokenizerParams,
    _generic_fast_class,
    load_local_tokenizer,
    train_tokenizer,
)


def _saved(tok, dest: Path) -> dict[str, bytes]:
    tok.save_pretrained(str(dest))
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir())}


@pytest.fixture(scope="module")
def trained_dirs(tmp_path_factory, shakespeare_paragraphs, stdlib_sources) -> list[Path]:
    from datasets import Dataset

    ds = Dataset.from_dict({"text": shakespeare_paragraphs[:400] + stdlib_sources[:4]})
    out = []
    for algorithm in ("bpe", "unigram"):
        d = tmp_path_factory.mktemp(f"trained-{algorithm}")
        params = TrainTokenizerParams.model_validate({"algorithm": algorithm, "vocab_size": 300})
        train_tokenizer(ds, "text", params, add_bos=True).save_pretrained(str(d))
        out.append(d)
    return out


def test_a_saved_fast_tokenizer_loads_as_autotokenizer_loads_it(tmp_path, tiny_tokenizer_dir, trained_dirs):
    from transformers import AutoTokenizer

    for i, d in enumerate([tiny_tokenizer_dir, *trained_dirs]):
        assert _generic_fast_class(d) is not None, d
        ours, ref = load_local_tokenizer(d), AutoTokenizer.from_pretrained(str(d))
        assert type(ours) is type(ref)
        assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, len(ours)) == (
            ref.bos_token_id,
            ref.eos_token_id,
            ref.pad_token_id,
            len(ref),
        )
        text = "To be, or not to be: ünïcödé ✓ 漢字"
        assert ours(text)["input_ids"] == ref(text)["input_ids"]
        assert _saved(ours, tmp_path / f"ours{i}") == _saved(ref, tmp_path / f"ref{i}")


def test_other_directories_go_through_autotokenizer(tmp_path, tiny_tokenizer_dir):
    model_dir = shutil.copytree(tiny_tokenizer_dir, tmp_path / "model")
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert _generic_fast_class(model_dir) is None  # AutoTokenizer reads the model type
    remote = shutil.copytree(tiny_tokenizer_dir, tmp_path / "remote")
    config = json.loads((remote / "tokenizer_config.json").read_text())
    (remote / "tokenizer_config.json").write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": ["x", "y"]}}))
    assert _generic_fast_class(remote) is None  # custom code: AutoTokenizer decides (and asks for trust)
    named = shutil.copytree(tiny_tokenizer_dir, tmp_path / "named")
    (named / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))
    assert _generic_fast_class(named) is None
    (named / "tokenizer.json").unlink()
    assert _generic_fast_class(named) is None


def test_loading_a_local_tokenizer_never_imports_torch(tiny_tokenizer_dir):
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from recipe_runner_stages.data.tokenize.tokenizer import load_tokenizer_from
        tok = load_tokenizer_from({str(tiny_tokenizer_dir)!r}, None)
        assert tok.bos_token_id is not None
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
