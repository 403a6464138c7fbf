"""The documented Python API (README "Python API", docs/studies.md) in a fresh process:
each entry point works as the first call a script or notebook makes (0.5 found the
blog's variants only after `ablation.variants()` had loaded its study)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

# (first call, what it must print): each runs alone in a fresh interpreter
FIRST_CALLS = {
    "build_model": ("import ablation; m = ablation.build_model('resnet34'); "
                    "print(m.count_params())", "416458"),
    "build_model_vgg19": ("import ablation; print(ablation.build_model('vgg19').count_params())",
                          "39002738"),
    "count_params": ("import ablation; print(ablation.count_params('resnet32_e').params_total)",
                     "470218"),
    "count_params_paper": ("from ablation import count_params; "
                           "print(count_params('he_resnet110').params_total)", "1740106"),
    "models.count_params": ("from ablation.models import count_params; "
                            "print(count_params('resnet152').depth)", "140"),
    "registry.get": ("from ablation import registry; print(registry.get('resnet32').label)",
                     "my_resnet_32"),
    "registry.variants": ("from ablation import registry; "
                          "print(len(registry.variants('resnet32_*')))", "7"),
    "registry.select": ("from ablation import registry; print(registry.select(['resnet34']))",
                        "['resnet34']"),
    "variants": ("import ablation; print(ablation.variants('resnet5*'))", "['resnet50']"),
    "load_study": ("import ablation; print(ablation.load_study('he2015').variants()[-1])",
                   "he_resnet110"),
}


def _fresh(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_every_entry_point_works_as_a_fresh_processs_first_call():
    procs = {name: _fresh(code) for name, (code, _) in FIRST_CALLS.items()}  # at once
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{name}: {err}"
        assert out.strip().splitlines()[-1] == FIRST_CALLS[name][1], f"{name}: {out}"


def test_an_unknown_name_is_still_unknown_after_the_built_ins_load():
    code = ("from ablation import registry\n"
            "try:\n    registry.get('resnet33')\nexcept registry.UnknownVariantError as e:\n"
            "    print(e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120).stdout
    assert out.startswith("unknown variant 'resnet33'; did you mean resnet34, resnet32"), out
