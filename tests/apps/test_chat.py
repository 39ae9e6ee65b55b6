"""`recipe chat` on the tiny recipe's run, scripted through stdin (not a
terminal: one prompt per line in, one reply per line out)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None

PROMPTS = ["I HAD always thought Jack Gisburn", "the height of his glory"]
PROMPT_LINES = "".join(p + "\n" for p in PROMPTS)
QUESTIONS = ["Name a color.", "Rewrite the sentence: the car is fast."]


def _chat(recipe_command: Any, built_run: Any, *args: str, stdin: str) -> Any:
    return recipe_command("chat", str(built_run.recipe), "--workdir", str(built_run.workdir), *args, stdin=stdin)


@pytest.mark.parametrize(
    "stage",
    ["pretrain", pytest.param("quantize", marks=pytest.mark.skipif(not HAS_LLAMA_CPP, reason="no llama-cpp-python"))],
)
def test_base_model_completes_each_line_like_a_plain_greedy_generate(
    stage, recipe_command, built_run, base_lm, greedy_completion
):
    """pretrain: the model directory through transformers; quantize: its f32
    GGUF file through llama.cpp, whose greedy text is transformers' too."""
    proc = _chat(recipe_command, built_run, "--stage", stage, "--greedy", "--max-new-tokens", "16", stdin=PROMPT_LINES)

    assert proc.returncode == 0, proc.stderr
    loaded = {"pretrain": f"loading model {built_run.base_model}", "quantize": f"loading gguf_file {built_run.gguf}"}
    assert loaded[stage] in proc.stderr
    assert proc.stdout == "".join(greedy_completion(base_lm, p, 16) + "\n" for p in PROMPTS)


def test_default_is_the_last_stage_built_the_adapter_on_its_base_with_the_sft_chat_template(
    recipe_command, built_run, adapter_lm, greedy_chat
):
    """Each line is a user turn of one conversation (the history is kept), rendered
    with the chatml template the sft stage trained with; the reply equals peft's
    greedy generate on base + LoRA."""
    proc = _chat(recipe_command, built_run, "--greedy", "--max-new-tokens", "16", stdin="\n".join(QUESTIONS) + "\n")

    assert proc.returncode == 0, proc.stderr
    assert f"loading adapter {built_run.adapter}" in proc.stderr
    first = greedy_chat(adapter_lm, [{"role": "user", "content": QUESTIONS[0]}], 16)
    history = [
        {"role": "user", "content": QUESTIONS[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": QUESTIONS[1]},
    ]
    second = greedy_chat(adapter_lm, history, 16)
    assert proc.stdout == f"{first}\n{second}\n"


def test_reset_and_system_prompt_shape_the_conversation(recipe_command, built_run, adapter_lm, greedy_chat):
    stdin = f"{QUESTIONS[0]}\n/reset\n{QUESTIONS[1]}\n/exit\nnever read\n"
    proc = _chat(
        recipe_command,
        built_run,
        "--stage",
        "sft",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--system",
        "Be brief.",
        stdin=stdin,
    )

    assert proc.returncode == 0, proc.stderr
    system = {"role": "system", "content": "Be brief."}
    expected = [greedy_chat(adapter_lm, [system, {"role": "user", "content": q}], 12) for q in QUESTIONS]
    assert proc.stdout == "".join(reply + "\n" for reply in expected)
    assert "(conversation cleared)" in proc.stderr


def test_an_adapter_directory_by_path_loads_on_the_base_its_config_names(
    recipe_command, built_run, adapter_lm, greedy_chat
):
    proc = recipe_command(
        "chat", "--model", str(built_run.adapter), "--greedy", "--max-new-tokens", "12", stdin=QUESTIONS[0] + "\n"
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == greedy_chat(adapter_lm, [{"role": "user", "content": QUESTIONS[0]}], 12) + "\n"


def test_seeded_sampling_is_reproducible(recipe_command, built_run):
    args = ("--stage", "pretrain", "--max-new-tokens", "24", "--temperature", "1.0", "--top-k", "0")
    first = _chat(recipe_command, built_run, *args, "--seed", "11", stdin=PROMPT_LINES)
    again = _chat(recipe_command, built_run, *args, "--seed", "11", stdin=PROMPT_LINES)
    other = _chat(recipe_command, built_run, *args, "--seed", "12", stdin=PROMPT_LINES)

    assert first.returncode == again.returncode == other.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout
    assert len(first.stdout.strip()) > 0


@pytest.mark.skipif(HAS_LLAMA_CPP, reason="llama-cpp-python is installed")
def test_the_gguf_stage_without_llama_cpp_says_what_to_install_with_exit_2(recipe_command, built_run):
    proc = _chat(recipe_command, built_run, "--stage", "quantize", stdin="hello\n")

    assert proc.returncode == 2
    assert f"{built_run.gguf} is a GGUF file: talking to it needs llama-cpp-python" in proc.stderr


def test_a_stage_that_is_not_a_model_is_refused_with_exit_2(recipe_command, built_run):
    proc = _chat(recipe_command, built_run, "--stage", "pack", stdin="hello\n")

    assert proc.returncode == 2
    assert "stage 'pack' (pack) produces packed_dataset, not a model" in proc.stderr
    assert "(init, pretrain, quantize, sft)" in proc.stderr
    assert proc.stdout == ""


def test_unknown_stage_and_unbuilt_run_are_refused_with_exit_2(recipe_command, built_run, tmp_path):
    unknown = _chat(recipe_command, built_run, "--stage", "sfft", stdin="")
    assert unknown.returncode == 2
    assert "no stage named 'sfft'" in unknown.stderr and "did you mean 'sft'" in unknown.stderr

    empty = recipe_command("chat", str(built_run.recipe), "--workdir", str(tmp_path), stdin="")
    assert empty.returncode == 2
    assert f"no model artifact yet: run the recipe first: recipe run {built_run.recipe} --workdir {tmp_path}" in (
        empty.stderr
    )

    one_stage = recipe_command("chat", str(built_run.recipe), "--workdir", str(tmp_path), "--stage", "sft", stdin="")
    assert one_stage.returncode == 2
    assert "stage 'sft' has no output under the recipe's current parameters: run the recipe first" in one_stage.stderr


def test_a_path_that_is_no_model_is_refused_with_exit_2(recipe_command, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    proc = recipe_command("chat", "--model", str(tmp_path), stdin="")

    assert proc.returncode == 2
    assert "is not a model: expected a Hugging Face model directory (config.json)" in proc.stderr
