"""The quantize stage's plan-time side: slots that depend on the method,
validate-time checks, and the facts its output keeps from the source model."""

from __future__ import annotations

from recipe_runner import MAX_POSITIONS, VOCAB_SIZE
from recipe_runner.artifacts import GGUF_FILE, QUANTIZED_MODEL
from recipe_runner.stage import PlanView
from recipe_runner_stages.deploy.quantize.stage import QuantizeStage


def test_slots_depend_on_method():
    P = QuantizeStage.Params
    assert QuantizeStage.output_slots(P(method="gguf")) == {"gguf": GGUF_FILE}
    for method in ("int8", "gptq", "bnb"):
        assert QuantizeStage.output_slots(P(method=method)) == {"model": QUANTIZED_MODEL}
    assert QuantizeStage.input_slots(P(method="gguf"))["dataset"].optional
    assert not QuantizeStage.input_slots(P(method="gptq"))["dataset"].optional  # calibration data is required
    errs = QuantizeStage.cross_check(PlanView("q", P(method="bnb", device="cpu", bits=3)))
    assert any("CUDA" in e for e in errs) and any("bits 4 or 8" in e for e in errs)


def test_output_keeps_the_source_models_facts():
    P = QuantizeStage.Params
    source = {"model": {MAX_POSITIONS: 128, VOCAB_SIZE: 4096}, "dataset": {"seq_length": 128}}
    assert QuantizeStage.output_facts(P(method="gguf"), source) == {"gguf": {MAX_POSITIONS: 128, VOCAB_SIZE: 4096}}
    assert QuantizeStage.output_facts(P(method="int8"), source) == {"model": {MAX_POSITIONS: 128, VOCAB_SIZE: 4096}}
    assert QuantizeStage.output_facts(P(method="int8"), {}) == {"model": {}}
