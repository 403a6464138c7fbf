"""Design spaces (ablation.study.spaces, ablation.report.spaces): models sampled from a
study's `[[space]]` as fixed quasi-random variants with their own counts; the
statistics the report compares spaces by, each checked by simulation against a known
truth; and a study of two spaces trained and reported from the CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT, run_cli, run_dirs

import ablation
from ablation import registry
from ablation.errors import AblationError
from ablation.report import stats
from ablation.study import spaces

EXAMPLE = ROOT / "examples" / "design_spaces.toml"


def test_a_space_samples_fixed_models_within_its_ranges(isolated_registry):
    s = ablation.load_study(EXAMPLE)
    c, e = s.spaces
    assert c.models == tuple(f"c_{i}" for i in range(24)) and len(e.models) == 24
    assert set(s.own) == {*c.models, *e.models}
    for sp, unit in ((c, "c"), (e, "e")):
        blocks = [sp.drawn(m)["blocks"] for m in sp.models]
        widths = [sp.drawn(m)["width"] for m in sp.models]
        assert set(blocks) == {1, 2, 3, 4, 5}  # quasi-random: every value, 24 draws
        assert min(widths) >= 8 and max(widths) <= 32
        # log-uniform: as many widths below 16 (the geometric middle) as above
        assert abs(sum(w < 16 for w in widths) - 12) <= 3
        for m in sp.models:
            v = registry.get(m)
            d = sp.drawn(m)
            assert v.unit == unit and all(st.blocks == d["blocks"] for st in v.stages)
            assert [st.width for st in v.stages] == [round(d["width"] * k) for k in (1, 2, 4)]
            assert v.stem_filters == d["width"]  # the stem scales with the first stage
    # the same space gives the same models, the first ones again when it draws more;
    # the two spaces draw differently
    again = [dict(c.values[i]) for i in range(24)]
    assert spaces.sample(c) == again
    assert spaces.sample(replace(c, samples=40))[:24] == again
    assert spaces.sample(e) != again


BAD = {
    "unknown field": ('fields = { depth = { min = 1, max = 3 } }', "unknown field 'depth'"),
    "min above max": ('fields = { blocks = { min = 3, max = 1 } }', "min 3 is above max 1"),
    "log from 0": ('fields = { width = { min = 0, max = 8, log = true } }',
                   "a log range needs min above 0"),
    "step on floats": ('fields = { dropout = { min = 0.0, max = 0.5, step = 1 } }',
                       "step must be a positive integer, on an integer range"),
    "empty choices": ('fields = { unit = { choices = [] } }', "choices must be a non-empty"),
    "one sample": ('samples = 1\nfields = { blocks = { min = 1, max = 2 } }',
                   "space 's': samples must be a whole number from 2 to 10,000"),
    "a model a unit cannot build": ('fields = { unit = { choices = ["nope"] } }',
                                    "model s_0 (unit nope): unknown unit 'nope'"),
}


def test_a_bad_space_is_one_line(tmp_path, isolated_registry):
    for case, (body, says) in BAD.items():
        samples = "" if "samples" in body else "samples = 2\n"
        path = tmp_path / f"{case.replace(' ', '_')}.toml"
        path.write_text(f'name = "s"\n\n[[space]]\nname = "s"\nbase = "resnet32_e"\n'
                        f"{samples}{body}\n")
        with pytest.raises(AblationError) as e:
            ablation.load_study(path)
        assert says in str(e.value) and "\n" not in str(e.value), case


# --- the statistics, by simulation against known truth -----------------------------------


def test_the_ks_test_holds_its_false_positive_rate_and_finds_a_shift():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    same = [ks_2samp(rng.normal(10, 1, 20), rng.normal(10, 1, 20)).pvalue < 0.05
            for _ in range(600)]
    assert 0.02 <= np.mean(same) <= 0.07  # at most its level (exact test: conservative)
    shifted = [ks_2samp(rng.normal(10, 1, 20), rng.normal(11.2, 1, 20)).pvalue < 0.05
               for _ in range(300)]
    assert np.mean(shifted) > 0.8


def test_best_of_n_estimates_the_expected_best_and_its_range_covers_it():
    """Spaces of 100 models with normal errors: the best of 25 drawn from the space
    has a known expectation (here by a million draws); the estimate from each space's
    100 is unbiased, and its middle-95 % range holds the truth in nearly every space."""
    rng = np.random.default_rng(1)
    truth = rng.normal(10, 1, (40_000, 25)).min(axis=1).mean()
    got, covered = [], []
    for k in range(200):
        mean, lo, hi = stats.best_of(rng.normal(10, 1, 100), 25, draws=300, seed=k)
        got.append(mean)
        covered.append(lo <= truth <= hi)
    assert abs(np.mean(got) - truth) < 0.05
    assert np.mean(covered) >= 0.9


def test_complexity_weights_make_spaces_of_one_law_look_alike():
    """Two spaces whose errors follow the same law of complexity (bigger: better) but
    which sample different sizes: the plain EDFs differ, the normalised ones agree; a
    size only one space reaches weighs nothing."""
    rng = np.random.default_rng(2)

    def space(lo, hi, n=400):
        macs = 10 ** rng.uniform(lo, hi, n)
        return macs, 20 - 3 * np.log10(macs) + rng.normal(0, 0.3, n)

    (ma, ea), (mb, eb) = space(6, 8), space(6, 7)  # b never reaches the larger sizes
    w = stats.complexity_weights({"a": ma.tolist(), "b": mb.tolist()})
    assert w["a"].sum() == pytest.approx(1) == w["b"].sum()
    assert (w["a"][ma > 10 ** 7.25] == 0).all()  # beyond b's reach
    grid = np.linspace(ea.min(), ea.max(), 200)

    def at(values, weights):
        x, y = stats.edf(values, weights)
        return np.array([y[x <= g][-1] if (x <= g).any() else 0.0 for g in grid])

    plain = np.abs(at(ea, None) - at(eb, None)).max()
    normalised = np.abs(at(ea, w["a"]) - at(eb, w["b"])).max()
    assert plain > 0.3 and normalised < 0.1


# --- end to end -------------------------------------------------------------------------


def test_two_spaces_train_through_the_queue_and_report_their_distributions(tmp_path,
                                                                           cifar_dir):
    study = tmp_path / "spaces.toml"
    study.write_text(EXAMPLE.read_text().replace("samples = 24", "samples = 2")
                     .replace("max = 5", "max = 1").replace("max = 32", "max = 12"))
    res = tmp_path / "results"
    flags = ["--epochs", "1", "--train-limit", "64", "--test-limit", "32", "--batch-size",
             "32", "--data-dir", str(cifar_dir), "--results", str(res)]
    dry = run_cli("run", "--study", str(study), "--all", "--dry-run", *flags)
    assert dry.returncode == 0 and "4 job(s)" in dry.stdout, dry.stdout + dry.stderr
    r = run_cli("run", "--study", str(study), "--all", "--workers", "2", *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(d.name.rsplit("-", 2)[0] for d in run_dirs(res)) == \
        ["c_0", "c_1", "e_0", "e_1"]
    # a third model a space: the first two are the same (done), the new ones' cost is
    # projected from the trained models' speed, scaled by multiply-adds
    study.write_text(study.read_text().replace("samples = 2", "samples = 3"))
    more = run_cli("run", "--study", str(study), "--all", "--dry-run", *flags)
    assert "6 job(s); about " in more.stdout, more.stdout + more.stderr
    assert "(2 job(s) at the speed of the measured variant nearest in multiply-adds" in \
        more.stdout and more.stdout.count("[done]") == 4
    study.write_text(study.read_text().replace("samples = 3", "samples = 2"))
    out = tmp_path / "report"
    rep = run_cli("report", "--study", str(study), "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (out / "README.md").read_text()
    assert "### Design spaces" in md and "| c " in md and "2/2" in md
    assert "best of n: expected (middle 95 %)" in md and "KS statistic" in md
    assert next(out.glob("*/spaces-edf.png")).stat().st_size > 10_000
