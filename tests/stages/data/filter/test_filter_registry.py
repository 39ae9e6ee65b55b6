"""Filters are registered in one entry-point group, built-in and plugin
alike: strict options validated when the recipe is validated (located, with a
did-you-mean), a plugin's filter used like a built-in one, and the generated
reference documenting the built-in filters whatever is installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from recipe_runner_stages.data.filter.registry import builtin_filters, load_filter
from recipe_runner_stages.data.filter.stage import FilterParams

BUILTIN = [
    "c4",
    "fineweb",
    "gopher_quality",
    "gopher_repetition",
    "language",
    "length",
    "paragraph_length",
    "paragraph_repetition",
]
HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "lm_eval", "datatrove", "fasttext")


def write_dist(root, name: str, entry_points: str, module: str = "", code: str = "") -> None:
    """A distribution on ``root`` (put on sys.path by the caller) registering ``entry_points``."""
    dist = root / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[recipe_runner.filters]\n" + entry_points)
    if module:
        (root / f"{module}.py").write_text(textwrap.dedent(code))


def test_filter_options_are_validated_strictly():
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"type": "paragraph_length", "min_linez": 3}]})
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"type": "no_such_filter"}]})
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"min_lines": 3}]})  # no type
    with pytest.raises(ValidationError):
        FilterParams.model_validate({"filters": [{"type": "plugin", "plugin": "not_installed"}]})


def test_plugin_filter_from_an_entry_point(tmp_path, rr_testplugin, shakespeare_paragraphs, run_filter):
    texts = shakespeare_paragraphs[:200]
    kept, m = run_filter(tmp_path, texts, [{"type": "has_word", "word": "love", "name": "mentions_love"}])
    assert kept == [t for t in texts if "love" in t]
    assert m["removed.mentions_love"] == len(texts) - len(kept)
    with pytest.raises(ValidationError):  # the plugin's own Options model rejects unknown keys
        FilterParams.model_validate({"filters": [{"type": "has_word", "wrd": "love"}]})


def test_built_in_filters_are_the_projects_entry_points(rr_testplugin):
    assert [f.Options.model_fields["type"].annotation.__args__[0] for f in builtin_filters()] == BUILTIN
    assert load_filter("has_word").__module__ == "rr_testplugin.filters"  # installed, not built in


def test_the_documented_filters_do_not_depend_on_installed_plugins(rr_testplugin):
    """docs/stages.md and the recipe schema are generated from FilterParams:
    they list the built-in filters, whether or not a plugin adds one."""
    schema = json.dumps(FilterParams.model_json_schema())
    assert "has_word" not in schema
    assert all(f'"{name}"' in schema for name in BUILTIN)


def test_recipe_validate_locates_filter_errors_with_suggestions(tmp_path, rr_testplugin, data_dir, recipe_cli):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        name: bad
        stages:
          - type: source
            params:
              sources: [{{path: "{data_dir / "the-verdict.txt"}"}}]
          - type: filter
            params:
              filters:
                - {{type: paragraph_length, min_linez: 3}}
                - {{type: paragraph_lenght}}
                - {{type: has_word, wrd: love}}
        """).lstrip()
    )
    proc = recipe_cli("validate", str(recipe))
    assert proc.returncode == 2
    err = proc.stderr
    assert f"{recipe}:9:11: stage 'filter': stages[1].params.filters[0].paragraph_length.min_linez: unknown key " in err
    assert "'min_linez' (did you mean 'min_lines'?)" in err
    assert f"{recipe}:10:12: stage 'filter': stages[1].params.filters[1].type: unknown filter type " in err
    assert "'paragraph_lenght' (did you mean 'paragraph_length'?)" in err
    assert f"{recipe}:11:28: stage 'filter': stages[1].params.filters[2].wrd: unknown key 'wrd' of filter " in err
    assert "'has_word' (did you mean 'word'?)" in err


def test_recipe_validate_loads_filters_without_heavy_libraries(tmp_path, rr_testplugin, data_dir):
    recipe = tmp_path / "ok.yaml"
    filters = [{"type": name} for name in BUILTIN] + [{"type": "has_word", "word": "love"}]
    recipe.write_text(
        json.dumps(
            {
                "name": "ok",
                "stages": [
                    {"type": "source", "params": {"sources": [{"path": str(data_dir / "the-verdict.txt")}]}},
                    {"type": "filter", "params": {"filters": filters}},
                ],
            }
        )
    )
    code = (
        "import sys; from recipe_runner.cli import app\n"
        f"try:\n    app(['validate', {str(recipe)!r}])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "recipe_runner_stages" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_a_broken_or_doubly_registered_filter_is_named(tmp_path, monkeypatch):
    write_dist(tmp_path, "rr-broken-filters", "broken = rr_no_such_module:Nope\n")
    write_dist(
        tmp_path,
        "rr-dup-filters",
        "length = rr_dup_filters:Length\n",
        "rr_dup_filters",
        """
        from recipe_runner_stages.data.filter.length import LengthFilter as Length
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValidationError, match=r"filter 'broken' from rr-broken-filters 0\.1 .* failed to import"):
        FilterParams.model_validate({"filters": [{"type": "broken"}]})
    with pytest.raises(ValidationError, match="'length' is registered by more than one package"):
        FilterParams.model_validate({"filters": [{"type": "length"}]})
