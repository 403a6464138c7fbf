"""Modern recipes as data: each field against its definition, written out here, not
against the code that computes it (optimizers, decay, schedules, warm-up, label
smoothing, mixup and cutmix, EMA, clipping); the recipe ids that must never move; and
the bad values that are one line each."""

from __future__ import annotations

import math
from dataclasses import fields

import keras
import numpy as np
import pytest
from conftest import ROOT, one_line_error, run_cli
from scipy import stats

from ablation import data
from ablation.errors import AblationError
from ablation.recipe import DEFAULTS, Recipe
from ablation.recipe import optimizer as optimizers
from ablation.recipe.schedule import RecipeSchedule
from ablation.study import load_study

MODERN = Recipe(epochs=6, optimizer="adamw", lr=0.002, weight_decay=0.05, schedule="cosine",
                warmup="linear", warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-5,
                label_smoothing=0.1, mixup=0.2, ema=0.999)


def test_the_blogs_and_the_papers_recipe_ids_never_move():
    """Fields added in 0.5 stay out of the id at their defaults: these ids name the run
    folders of every study run so far."""
    assert DEFAULTS.id == "cifar10-e200-b128-blog-fp32-41614e"
    assert load_study("he2015").recipe().id == "cifar10-e164-b128-crop-fp32-dca78e"
    assert load_study("identity2016").recipe().id == "cifar10-e164-b128-crop-fp32-435fdd"
    assert Recipe(epochs=2, train_limit=128, test_limit=64, batch_size=32).id == \
        "cifar10-e2-b32-blog-fp32-sub128-64-209bd6"
    assert MODERN.id != MODERN.replace(ema=0.99).id != DEFAULTS.id


@pytest.mark.parametrize("steps_per_epoch", [1, 7])
def test_every_step_of_a_cosine_schedule_with_linear_warm_up_is_the_formula(
        steps_per_epoch):
    r, spe = MODERN, steps_per_epoch
    warm, total = r.warmup_epochs * spe, r.epochs * spe
    schedule = RecipeSchedule(r, spe)
    for step in range(total):
        if step < warm:  # linear, from warmup_lr towards lr
            want = 1e-4 + (0.002 - 1e-4) * step / warm
        else:  # cosine from lr down to min_lr over the steps after the warm-up
            t = (step - warm) / (total - warm)
            want = 1e-5 + (0.002 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t))
        assert r.lr_at(step, spe) == pytest.approx(want, rel=1e-12)
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        assert got == pytest.approx(want, rel=2e-6), step


def test_linear_constant_and_step_schedules_per_step():
    lin = Recipe(epochs=4, schedule="linear", lr=0.4, min_lr=0.0)
    s = RecipeSchedule(lin, 5)
    for step in range(20):
        assert float(keras.ops.convert_to_numpy(s(step))) == pytest.approx(
            0.4 * (1 - step / 20), abs=1e-7)
    const = RecipeSchedule(Recipe(epochs=3, schedule="constant", lr=0.3), 4)
    assert {round(float(keras.ops.convert_to_numpy(const(k))), 7) for k in range(12)} == {0.3}
    blog = Recipe(epochs=10)  # the blog's step schedule: drops at epochs 5 and 7 of 10
    step = RecipeSchedule(blog, 3)
    lrs = [float(keras.ops.convert_to_numpy(step(k))) for k in range(30)]
    assert lrs == [np.float32(v) for v in [0.1] * 15 + [0.01] * 6 + [0.001] * 9]
    assert [blog.learning_rate(e) for e in range(10)] == [0.1] * 5 + [0.01] * 2 + [0.001] * 3


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                             keras.layers.BatchNormalization(name="bn")])


def test_adamw_with_zero_gradients_shrinks_each_kernel_by_lr_times_wd_a_step():
    m = _model()
    for v in m.trainable_variables:  # non-zero biases and offsets, to see them kept
        v.assign(v + 0.5)
    r = Recipe(optimizer="adamw", lr=0.002, weight_decay=0.05, schedule="constant")
    opt = optimizers.optimizer(r, keras)
    before = [keras.ops.convert_to_numpy(v) for v in m.trainable_variables]
    zeros = [keras.ops.zeros_like(v) for v in m.trainable_variables]
    for _ in range(3):
        opt.apply_gradients(zip(zeros, m.trainable_variables, strict=True))
    for v, w in zip(m.trainable_variables, before, strict=True):
        got = keras.ops.convert_to_numpy(v)
        if v.path.endswith("kernel"):
            np.testing.assert_allclose(got, w * (1 - 0.002 * 0.05) ** 3, rtol=1e-6)
        else:  # bias, BN gamma and beta: never decayed
            np.testing.assert_array_equal(got, w)
    assert r.decoupled and optimizers.l2(r) == 0.0
    assert not DEFAULTS.decoupled and optimizers.l2(DEFAULTS) == 1e-4  # the blog: L2 loss


def test_with_bias_decay_decoupled_decay_still_spares_the_position_embedding_and_token():
    from ablation.layers import ClassToken, PositionEmbedding

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(3, name="d"),
                          ClassToken(name="cls"), PositionEmbedding(name="pos")])
    for v in m.trainable_variables:
        v.assign(v + 0.5)
    r = Recipe(optimizer="adamw", lr=0.002, weight_decay=0.05, schedule="constant",
               bias_decay=True)
    opt = optimizers.optimizer(r, keras)
    before = [keras.ops.convert_to_numpy(v) for v in m.trainable_variables]
    opt.apply_gradients(zip([keras.ops.zeros_like(v) for v in m.trainable_variables],
                            m.trainable_variables, strict=True))
    for v, w in zip(m.trainable_variables, before, strict=True):
        got = keras.ops.convert_to_numpy(v)
        if v.path.endswith(("class_token", "position_embedding")):
            np.testing.assert_array_equal(got, w)
        else:  # the kernel and, with bias_decay, the bias
            np.testing.assert_allclose(got, w * (1 - 0.002 * 0.05), rtol=1e-6)


def test_label_smoothing_loss_is_the_formula_on_a_hand_made_batch():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([[1, 0, 0], [0, 1, 0]], "float32")
    eps, k = 0.1, 3
    smoothed = labels * (1 - eps) + eps / k
    want = float(np.mean(-(smoothed * np.log(probs)).sum(axis=1)))
    loss = optimizers.loss(Recipe(label_smoothing=0.1), keras)
    assert float(keras.ops.convert_to_numpy(loss(labels, probs))) == pytest.approx(
        want, rel=1e-6)
    assert optimizers.loss(DEFAULTS, keras) == "categorical_crossentropy"


def _batch(n=10, size=8):
    """n images of n classes; each pixel holds its image's index, so a pixel's origin
    is readable after mixing."""
    x = np.repeat(np.arange(n, dtype="float32")[:, None, None, None], size * size * 3
                  ).reshape(n, size, size, 3)
    return x, data.one_hot(np.arange(n), n)


def test_mixup_labels_sum_to_one_and_its_weight_is_beta_distributed():
    x, y = _batch()
    y = y.astype("float64")  # Beta(0.2, 0.2) puts weights within float32's rounding of 1
    lams = []
    for b in range(2000):
        mx, my = data.mix(x, y, np.random.default_rng([7, 0, b, 1]), mixup=0.2)
        np.testing.assert_allclose(my.sum(axis=1), 1.0, rtol=1e-12)
        # row i is lam·(image i) + (1 − lam)·(its partner): its own class's label is lam
        mixed = [i for i in range(10) if my[i, i] < 1]
        if not mixed:  # lam within float64's rounding of 1: every row its own
            lams.append(1.0)
            continue
        i = mixed[0]
        partner = int(np.argmax(np.where(np.arange(10) == i, -1, my[i])))
        lam = float(my[i, i])
        np.testing.assert_allclose(mx[i], lam * i + (1 - lam) * partner, atol=1e-4)
        lams.append(lam)
    assert stats.kstest(lams, stats.beta(0.2, 0.2).cdf).pvalue > 0.01


def test_cutmix_pastes_a_box_and_the_labels_take_its_exact_share():
    x, y = _batch(size=16)
    pasted = 0
    for b in range(400):
        mx, my = data.mix(x, y, np.random.default_rng([3, 1, b, 1]), cutmix=1.0)
        np.testing.assert_allclose(my.sum(axis=1), 1.0, rtol=1e-6)
        for i in range(10):
            foreign = mx[i, :, :, 0] != i
            if not foreign.any():
                continue
            pasted += 1
            rows, cols = np.flatnonzero(foreign.any(1)), np.flatnonzero(foreign.any(0))
            assert foreign[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one box
            assert foreign.sum() == len(rows) * len(cols)
            # the label's own share is the share of the image still its own
            assert my[i, i] == pytest.approx(1 - foreign.mean(), abs=1e-6)
    assert pasted > 1000


def test_mixup_and_cutmix_together_take_one_each_batch():
    x, y = _batch(size=16)
    kinds = set()
    for b in range(50):
        mx, _ = data.mix(x, y, np.random.default_rng([1, 0, b, 1]), mixup=0.4, cutmix=1.0)
        whole = np.all(mx == mx[:, :1, :1, :1], axis=(1, 2, 3))  # mixup: flat images
        kinds.add("mixup" if whole.all() else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_ema_weights_are_the_moving_average_of_the_trained_weights():
    m = _model()
    m.compile(optimizer=optimizers.optimizer(Recipe(ema=0.9, lr=0.05), keras), loss="mse")
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([keras.ops.convert_to_numpy(v) for v in m.trainable_variables])

    rng = np.random.default_rng(0)
    m.fit(rng.normal(size=(40, 4)), rng.normal(size=(40, 3)), batch_size=8, epochs=1,
          callbacks=[Watch()], verbose=0, shuffle=False)
    avg = seen[0]  # the first step's weights, then avg = 0.9·avg + 0.1·w a step
    for w in seen[1:]:
        avg = [0.9 * a + 0.1 * b for a, b in zip(avg, w, strict=True)]
    # fit's end puts the averaged weights into the model (what is saved and tested)
    for v, a in zip(m.trainable_variables, avg, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a, rtol=1e-5, atol=1e-7)


def test_clipping_bounds_an_updates_global_norm():
    m = _model()
    opt = optimizers.optimizer(Recipe(grad_clip=0.5, lr=1.0, momentum=0.0,
                                      nesterov=False), keras)
    before = [keras.ops.convert_to_numpy(v) for v in m.trainable_variables]
    grads = [keras.ops.ones_like(v) * 10 for v in m.trainable_variables]
    opt.apply_gradients(zip(grads, m.trainable_variables, strict=True))
    step = [keras.ops.convert_to_numpy(v) - w for v, w in zip(m.trainable_variables, before,
                                                                 strict=True)]
    assert math.sqrt(sum(float((s ** 2).sum()) for s in step)) == pytest.approx(0.5, rel=1e-5)


def test_the_recipe_line_says_every_field_that_differs_in_words():
    line = MODERN.describe()
    for words in ("AdamW lr 0.002", "wd 0.05 decoupled", "cosine to 1e-05 (per step)",
                  "2 linear warm-up epoch(s) from lr 0.0001", "label smoothing 0.1",
                  "mixup 0.2", "EMA 0.999 (test accuracy on the averaged weights)"):
        assert words in line, (words, line)
    assert DEFAULTS.describe() == (
        "200 epochs, batch 128, SGD lr 0.1 (momentum 0.9, Nesterov), L2 0.0001, lr ×0.1 "
        "from epochs 81 and 122 (0-based), augmentation `blog`, precision fp32")


@pytest.mark.parametrize("args,says", [
    (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    (["--label-smoothing", "-0.1"], "--label-smoothing: must be in [0, 1)"),
    (["--schedule", "cosine", "--milestones", "3,4"], "milestones go with the step schedule"),
    (["--schedule", "cosine", "--min-lr", "0.5"], "min-lr 0.5 must be below lr 0.1"),
    (["--optimizer", "adamw", "--momentum", "0.8"], "momentum is SGD's setting"),
    (["--optimizer", "adamw", "--decay", "l2"], "adamw decays weights decoupled"),
    (["--beta-2", "0.99"], "beta-2 is not a setting of sgd"),
    (["--warmup", "linear"], "a linear warm-up needs warmup-epochs"),
    (["--warmup", "linear", "--warmup-epochs", "1", "--warmup-lr", "0.2"],
     "give a warmup-lr below lr 0.1"),
    (["--ema", "1"], "--ema: must be in [0, 1)"),
    (["--grad-clip", "nan"], "--grad-clip: must be >= 0"),
    (["--pad", "2"], "augment blog pads nothing"),
    (["--lookahead", "0.95", "--ema", "0.99"], "ema and lookahead both average the weights"),
    (["--whiten-bias-epochs", "2", "--epochs", "3"],  # refused before anything is queued
     "whiten-bias-epochs: resnet32 has no whitening layer (ops.whiten)"),
])
def test_bad_recipe_values_are_one_line(tmp_path, args, says):
    r = run_cli("run", "resnet32", *args, "--dry-run", "--results", str(tmp_path / "r"))
    assert says in one_line_error(r)


def test_a_study_file_speaks_the_same_recipe(tmp_path):
    f = tmp_path / "modern.toml"
    f.write_text('name = "modern"\n[recipe]\noptimizer = "adamw"\nschedule = "cosine"\n'
                 'warmup = "linear"\nwarmup_epochs = 2\nwarmup_lr = 0.0001\n'
                 'label_smoothing = 0.1\nmixup = 0.2\n'
                 'ema = 0.999\nweight_decay = 0.05\nlr = 0.002\n'
                 '[[variant]]\nname = "m8"\nbase = "resnet32_e"\n'
                 'stages = [[1, 16], [1, 32], [1, 64]]\nrecipe = { grad_clip = 1.0 }\n')
    r = run_cli("run", "--study", str(f), "--all", "--dry-run", "--results",
                str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert '"optimizer": "adamw"' in r.stdout and '"schedule": "cosine"' in r.stdout
    f.write_text('name = "modern"\n[recipe]\nlabel_smoothing = -1\n')
    assert "[recipe] label-smoothing must be in [0, 1), got -1" in one_line_error(
        run_cli("list", "--study", str(f)))
    f.write_text('name = "modern"\n[[variant]]\nname = "m"\nbase = "resnet32_e"\n'
                 'recipe = { epochs = 3 }\n')
    assert "variant 'm': recipe: unknown key 'epochs'" in one_line_error(
        run_cli("list", "--study", str(f)))
    with pytest.raises(AblationError, match="optimizer must be one of sgd, adam, adamw"):
        Recipe(optimizer="adagrad")
    # a typo gets a hint; what the runner fills in is no key of a study file
    with pytest.raises(AblationError, match=r"'warmup_epoch'; did you mean warmup_epochs\?"):
        Recipe.parse({"warmup_epoch": 1})
    with pytest.raises(AblationError, match="unknown key 'data_hash' ") as e:
        Recipe.parse({"data_hash": "0" * 64})
    assert "data_hash" not in str(e.value).split("allowed:")[1]


def test_the_docs_recipe_table_has_every_field_its_flag_and_default():
    text = (ROOT / "docs" / "studies.md").read_text()
    table = text[text.index("### The recipe"):text.index("## Units")]
    for f in fields(Recipe):
        if f.metadata["kind"] == "internal":  # set by `ablation run`, never by hand
            continue
        flag = "--" + f.name.replace("_", "-")
        row = next((line for line in table.splitlines()  # its name in the first column
                    if line.startswith("|") and f"`{f.name}`" in line.split("|")[1]), None)
        assert row is not None and flag in row, f.name
