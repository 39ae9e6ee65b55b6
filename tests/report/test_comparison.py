"""The comparison's own parts: which way a metric improves, flattened
parameters, and the recipe differences of two real runs."""

from __future__ import annotations

from recipe_runner.report import collect_run
from recipe_runner.report.comparison import direction, flatten, recipe_differences


def test_direction_of_improvement():
    assert direction("eval_loss") == direction("perplexity") == direction("train_runtime_s") == -1
    assert direction("truthfulqa_mc2_local/acc") == direction("reward_gain") == direction("eval_accuracy") == 1
    assert direction("rows") == direction("perplexity_tokens") == direction("documents_out") == 0


def test_flatten_names_every_leaf_by_its_path():
    params = {"filters": [{"type": "length", "min_words": 20}], "validation": 0.1, "languages": ["en", "fr"]}
    assert flatten(params) == {
        "filters.0.type": "length",
        "filters.0.min_words": 20,
        "validation": 0.1,
        "languages": ["en", "fr"],
    }


def test_recipe_differences_are_the_parameters_set_differently(tiny_run, second_run):
    diff = recipe_differences(collect_run(tiny_run.run_dir), collect_run(second_run.run_dir))
    assert sorted(diff) == [("pretrain", "params.learning_rate", 0.003, 0.01), ("pretrain", "params.max_steps", 6, 4)]
    assert recipe_differences(collect_run(tiny_run.run_dir), collect_run(tiny_run.run_dir)) == []
