"""The course's three models (TinySolar-248m-4k, downscaled to 10 layers,
up-scaled to 16): parameter counts on the meta device."""

from __future__ import annotations

from recipe_runner_stages.model.init.course_models import TINYSOLAR_CONFIG, course_param_counts
from recipe_runner_stages.model.init.random_init import build_config, build_random_model


def test_course_parameter_counts_on_meta_device(llama_param_count):
    counts = course_param_counts()
    # the course's published numbers, and the same from first principles
    assert counts == {"base_12": 248_013_824, "downscaled_10": 217_601_024, "upscaled_16": 308_839_424}
    for key, layers in (("base_12", 12), ("downscaled_10", 10), ("upscaled_16", 16)):
        assert counts[key] == llama_param_count(32000, 1024, 4096, layers, 32, 8)
    model = build_random_model(build_config("llama", TINYSOLAR_CONFIG), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
