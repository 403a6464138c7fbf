"""The registry: names, globs, errors, and the blog's parameter counts."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from ablation import registry, variants
from ablation.models import count_params
from ablation.registry import UnknownVariantError

TWELVE = ["resnet32", "resnet32_a", "resnet32_b", "resnet32_c", "resnet32_d", "resnet32_e",
          "resnet32_d_v2", "resnet32_e_v2", "resnet34", "resnet50", "resnet101", "resnet152"]
ALL = [*TWELVE, "vgg19", "vgg19_pretrain"]  # the blog's study: its ResNets and its VGG19

# The blog's published (total, trainable, non-trainable), typed here, not derived
BLOG = {
    **dict.fromkeys(["resnet32", "resnet32_e", "resnet32_e_v2"], (470_218, 467_946, 2_272)),
    **dict.fromkeys(["resnet32_a", "resnet32_b", "resnet32_c", "resnet32_d", "resnet32_d_v2"],
                    (470_410, 468_042, 2_368)),
    "resnet34": (416_458, 414_186, 2_272),
    "resnet50": (23_593_098, 23_543_690, 49_408),
    "resnet101": (42_663_562, 42_561_930, 101_632),
    "resnet152": (57_246_858, 57_105_290, 141_568),
    **dict.fromkeys(["vgg19", "vgg19_pretrain"], (39_002_738, 38_975_326, 27_412)),
}
DEPTH = {**dict.fromkeys(TWELVE[:8], 32), "resnet34": 34, "resnet50": 50, "resnet101": 101,
         "resnet152": 140, "vgg19": 19, "vgg19_pretrain": 19}


def test_the_blogs_networks_are_registered():
    assert variants() == ALL


def test_glob_filtering():
    assert variants("resnet32_*") == TWELVE[1:8]
    assert variants("*_v2") == ["resnet32_d_v2", "resnet32_e_v2"]
    assert variants("resnet1*") == ["resnet101", "resnet152"]
    assert variants("nothing*") == []


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownVariantError) as e:
        registry.get("resnet32_f")
    msg = str(e.value)
    assert "resnet32_f" in msg and "resnet32_e" in msg


def test_select_keeps_registry_order_and_rejects_empty_globs():
    assert registry.select(["resnet50", "resnet32_a", "resnet32_?"]) == [*TWELVE[1:6], "resnet50"]
    with pytest.raises(UnknownVariantError, match="no variant matches"):
        registry.select(["alexnet*"])


def test_a_damaged_definition_is_one_line_naming_the_key():
    d = registry.get("resnet32_e").to_dict()
    assert registry.Variant.from_dict(d) == registry.get("resnet32_e")
    with pytest.raises(registry.AblationError, match=r"^not a variant definition: unknown "
                                                      r"key 'depthh'$"):
        registry.Variant.from_dict({**d, "depthh": 3})


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("resnet32"))


@pytest.mark.parametrize("name", ALL)
def test_analytic_counts_match_the_blog(name):
    info = count_params(name)
    assert (info.params_total, info.params_trainable, info.params_non_trainable) == BLOG[name]
    assert info.depth == DEPTH[name]


@pytest.mark.parametrize("name", ALL)
def test_built_models_match_the_blog(name):
    """The real Keras graph, not the analytic count, must have the blog's numbers."""
    import numpy as np

    from ablation import build_model

    m = build_model(name)
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in m.non_trainable_weights)
    assert (trainable + non_trainable, trainable, non_trainable) == BLOG[name]
    assert m.count_params() == BLOG[name][0]


def test_cli_list_json_reports_the_blog_counts():
    r = run_cli("list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == ALL
    for row in rows:
        assert (row["params_total"], row["params_trainable"],
                row["params_non_trainable"]) == BLOG[row["name"]]
        assert row["depth"] == DEPTH[row["name"]]
        assert row["label"] and row["description"]


def test_cli_list_table_and_unknown_name():
    r = run_cli("list")
    assert r.returncode == 0
    assert "57,246,858" in r.stdout and "my_resnet_34" in r.stdout
    r = run_cli("list", "resnet33")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "unknown variant 'resnet33'" in r.stderr
