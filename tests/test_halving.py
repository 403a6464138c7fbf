"""Successive halving: the promotion rule on planted learning curves, where the best
setting is known (no training), run asynchronously on several workers through the same
code the runner uses (`ablation.halving.decide`); the expected-best-vs-budget estimator
against simulation; and one real tiny study end to end, killed in the middle of a rung."""

from __future__ import annotations

import heapq
import json
import math
import os
import re
import signal
from dataclasses import replace

import numpy as np
import pytest
from conftest import hold_after, run_cli, run_dirs, start_cli, wait_for

from ablation import halving
from ablation.protocol import HELD_MARKER, JobKey, read_held
from ablation.report import stats

EPOCHS, FACTOR = 27, 3
RUNGS = halving.Halving(FACTOR).rungs(EPOCHS)


def planted(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n settings whose final accuracies are spread evenly over 0.60-0.90 in a random
    order (the best known, 1.2 points above the next), on curves that rise as
    final · (1 − e^(−e/τ)) with τ from 3.5 to 4.5 (the order mostly kept, with
    crossings near the top), plus noise of sd 0.4 points per measurement."""
    finals = rng.permutation(np.linspace(0.60, 0.90, n))
    taus = rng.uniform(3.5, 4.5, n)
    return finals, taus


def accuracy(final, tau, epoch, rng) -> float:
    return final * (1 - math.exp(-epoch / tau)) + rng.normal(0, 0.004)


def simulate(n: int, workers: int, seed: int, reserve: float = 0.0,
             slots: bool = True, curves=None, rungs=RUNGS
             ) -> tuple[int, int, int, float]:
    """Run the rule on `workers` simulated slots, each epoch taking one time unit:
    returns (the chosen setting, the true best, epochs spent, the slots' busy share).
    `slots=False` hides the number of slots from the rule (0.6's ASHA everywhere);
    `curves`: (finals, taus) in the order the settings are started."""
    rng = np.random.default_rng(seed)
    finals, taus = curves if curves is not None else planted(n, rng)
    trials = [halving.Trial(str(i)) for i in range(n)]
    by = {t.key: t for t in trials}
    clock, events, spent = 0.0, [], 0

    def dispatch(free: int) -> None:
        nonlocal spent
        for key, target in halving.decide(trials, rungs, FACTOR, free, reserve=reserve,
                                          slots=workers if slots else None):
            t = by[key]
            t.running = True
            spent += target - t.done
            heapq.heappush(events, (clock + target - t.done, key, target))

    dispatch(workers)
    while events:
        clock, key, target = heapq.heappop(events)
        t = by[key]
        t.running, t.done = False, target
        i = int(key)
        t.curve.update({e: accuracy(finals[i], taus[i], e, rng) for e in rungs if e <= target})
        dispatch(workers - sum(x.running for x in trials))
    top = [t for t in trials if t.done == rungs[-1]]
    chosen = max(top, key=lambda t: t.curve[rungs[-1]])
    return int(chosen.key), int(np.argmax(finals)), spent, spent / (workers * clock)


def test_the_rungs_are_declared_epochs_and_the_share_of_the_grid_is_the_theorys():
    assert RUNGS == [3, 9, 27]
    # a step schedule's first drop at epoch 11 of 27: the first rung is past it
    assert halving.Halving(3).rungs(27, annealed=12) == [12, 27]
    assert halving.Halving(3, min_epochs=3).rungs(27, annealed=12) == [3, 9, 27]
    assert halving.Halving(3).rungs(9, annealed=9) == [9]
    assert halving.Halving(2, min_epochs=5).rungs(40) == [5, 10, 20, 40]
    assert halving.Halving(3).rungs(3) == [1, 3]
    # with resumes (each epoch trained once): (3 + 6/3 + 18/9) / 27 of the grid, 7/27
    assert halving.theoretical_fraction(RUNGS, FACTOR) == pytest.approx(7 / 27)
    # what a grid of n settings spends when every rung sends on its quota: a grid of 3
    # keeps one setting from rung 0 on (11 of 27 epochs), a grid of 1 trains it in full
    r9 = halving.Halving(3).rungs(9)
    assert halving.planned_epochs(3, r9, 3) == 3 * 1 + 1 * 2 + 1 * 6 == 11
    assert halving.planned_epochs(1, r9, 3) == 9
    assert halving.planned_epochs(27, RUNGS, FACTOR) == 7 * 27


def test_one_worker_an_ascending_grid_run_order_cannot_decide():
    """0.6's failure, planted: one worker, an ascending grid of 7 learning rates, the
    best setting (started 6th) leading from the first rung on. Asynchronous promotion
    gave the rung's promotion to the settings that finished first; with the rule told
    its slots, every setting reaches a rung before any goes on, and the best is chosen
    in at least 95 % of 200 simulated searches."""
    rungs = halving.Halving(3).rungs(9)
    finals = np.array([0.30, 0.40, 0.50, 0.55, 0.60, 0.70, 0.62])  # the 6th is the best
    taus = np.full(7, 1.5)
    hits = {True: 0, False: 0}
    for told in hits:
        for rep in range(200):
            chosen, best, _, _ = simulate(7, 1, rep, slots=told, curves=(finals, taus),
                                          rungs=rungs)
            hits[told] += chosen == best == 5
    print(f"best chosen, told its slot: {hits[True]}/200; not told (0.6): {hits[False]}/200")
    assert hits[True] / 200 >= 0.95
    assert hits[False] / 200 < 0.5  # run order decided: the failure this rule prevents


def test_synchronous_where_slots_are_fewer_than_a_rungs_settings():
    assert halving.synchronous(27, RUNGS, FACTOR, 4) == [True, True]
    assert halving.synchronous(27, RUNGS, FACTOR, 9) == [True, False]
    assert halving.synchronous(27, RUNGS, FACTOR, 27) == [False, False]
    assert halving.synchronous(27, RUNGS, FACTOR, None) == [False, False]
    # two slots, nine settings: nothing goes on before the rung is complete, though one
    # setting already ranks in the top third of those done
    trials = [halving.Trial(str(i)) for i in range(9)]
    for i, acc in zip((0, 1, 2), (0.5, 0.7, 0.6), strict=True):
        trials[i].done, trials[i].target, trials[i].curve = 3, 3, {3: acc}
    assert halving.decide(trials, RUNGS, FACTOR, free=2, slots=2) == [("3", 3), ("4", 3)]
    # a setting that failed never holds its rung back, nor goes on
    done = [halving.Trial(str(i), done=3, target=3, curve={3: 0.1 * i}) for i in range(8)]
    done.append(halving.Trial("8", done=3, target=3, curve={3: 0.99}, failed=True))
    assert halving.complete(done, RUNGS, FACTOR, 0)
    assert halving.decide(done, RUNGS, FACTOR, free=3, slots=3) == [("7", 9), ("6", 9), ("5", 9)]



def test_a_tie_at_a_rung_goes_to_the_setting_nearest_the_variants_own():
    """As the final choice's tie rule (docs/studies.md): equal accuracies at a rung send
    on the setting nearest the variant's own recipe, not the one whose id sorts first."""
    trials = [halving.Trial(key, done=3, target=3, curve={3: 0.1}, distance=far)
              for key, far in (("a", 0.69), ("b", 0.0), ("c", 0.69))]
    assert halving.decide(trials, RUNGS, FACTOR, free=1, slots=1) == [("b", 9)]

# ASHA where slots are as many as a rung's settings: (reserve, the declared fraction of
# repetitions that choose the best setting): promotions as soon as a setting ranks in
# the top third of those done, half the promotions held for the complete rung, and every
# promotion held: measured here at 0.70, 0.81 and 0.955 over these 200 repetitions on 27
# workers; with 4 workers every rung with more settings than slots is synchronous
# whatever the reserve (0.95)
DECLARED = {0.0: 0.60, 0.5: 0.75, 1.0: 0.90}


@pytest.mark.parametrize("reserve", list(DECLARED))
def test_planted_curves_the_best_setting_is_chosen_and_the_cost_is_at_most_the_theorys(
        reserve):
    """27 settings on 27 workers (asynchronous rungs) and on 4 (synchronous ones), 200
    repetitions: the best is chosen in at least the declared fraction, and each search
    spends at most 7/27 of the full grid (about a quarter; restarting each rung from
    scratch would spend a third)."""
    n, reps = 27, 200
    grid = halving.grid_epochs(n, EPOCHS)
    for workers, floor in ((27, DECLARED[reserve]), (4, 0.90)):
        hits, worst, busy = 0, 0.0, []
        for rep in range(reps):
            chosen, best, spent, used = simulate(n, workers, seed=rep, reserve=reserve)
            hits += chosen == best
            worst = max(worst, spent / grid)
            busy.append(used)
        print(f"{workers} workers, reserve {reserve}: best chosen in {hits}/{reps}; the most "
              f"spent: {worst:.3f} of the grid; slots busy {np.mean(busy):.2f} of the time")
        assert hits / reps >= floor
        assert worst <= halving.theoretical_fraction(RUNGS, FACTOR) + 1e-9 <= 1 / 3


def test_no_slot_waits_for_a_rung_and_a_budget_stops_new_settings():
    trials = [halving.Trial(str(i)) for i in range(9)]
    # three settings done at rung 0, one running, five not started: a promotion first
    for i, acc in zip((0, 1, 2), (0.5, 0.7, 0.6), strict=True):
        trials[i].done, trials[i].target, trials[i].curve = 3, 3, {3: acc}
    trials[3].running = True
    assert halving.decide(trials, RUNGS, FACTOR, free=2) == [("1", 9), ("4", 3)]  # ASHA
    # a budget of 40 epochs (over 2 seeds): 9 spent, one more setting at rung 0 fits
    fresh = [halving.Trial(str(i)) for i in range(9)]
    assert halving.decide(fresh, RUNGS, FACTOR, free=9, budget=40, spent=9, seeds=2) == [
        ("0", 3), ("1", 3), ("2", 3), ("3", 3), ("4", 3)]
    # a setting killed between rungs goes on to the rung it was sent to, before anything
    stopped = [halving.Trial("a", done=5, target=5), halving.Trial("b")]
    assert halving.decide(stopped, RUNGS, FACTOR, free=1) == [("a", 9)]


def test_a_setting_that_diverged_is_never_promoted_and_the_search_goes_on(tmp_path):
    """0.6 crashed (KeyError 'validation_accuracy') on a tuning run whose history has no
    validation column: its first epoch diverged, so Keras' CSVLogger never saw one. Such
    a setting, a failed one and one whose validation accuracy is NaN at a rung it reached
    have failed; the others are ranked, started in a seeded order that is not the
    grid's."""
    from types import SimpleNamespace

    import pandas as pd

    from ablation import registry, tune
    from ablation.plan import Plan
    from ablation.policies.tuned import Search
    from ablation.protocol import JobState
    from ablation.recipe import Recipe

    base = Recipe(epochs=3, validation=40)
    t = tune.parse({"lr": [0.01, 0.03, 0.1, 0.3, 1e9],
                    "halving": {"factor": 3, "min_epochs": 1}}, base, "s")
    recipes = [t.recipe(base, c) for c in t.candidates()]
    plan = Plan([registry.get("resnet32_e")], 1, base, tmp_path, None,
                recipes={"resnet32_e": recipes}, phase="tune",
                tuning=tune.tuning_record("s", base, t))
    search = Search(plan, t)

    def run(recipe, status, **cols):
        h = pd.DataFrame({"epoch": [0], "loss": [0.5], **cols})
        return SimpleNamespace(variant="resnet32_e", seed=0, history=h, record=SimpleNamespace(
            phase="tune", tuning=SimpleNamespace(group=plan.tuning["group"]),
            recipe_id=recipe.id, status=status, epochs_done=1))

    by_lr = {r.lr: r for r in recipes}
    rs = [run(by_lr[0.01], JobState.PAUSED, validation_accuracy=[0.3]),
          run(by_lr[0.03], JobState.PAUSED, validation_accuracy=[0.5]),
          run(by_lr[0.1], JobState.PAUSED, validation_accuracy=[float("nan")]),
          run(by_lr[0.3], JobState.FAILED, validation_accuracy=[0.9]),
          run(by_lr[1e9], JobState.PAUSED)]  # no validation column at all
    view = SimpleNamespace(active=set, runs=lambda: rs, slots=1)
    trials, spent = search._trials(view, "resnet32_e")
    failed = {next(r.lr for r in recipes if r.id == tr.key) for tr in trials if tr.failed}
    assert failed == {0.1, 0.3, 1e9} and spent == 5
    assert search.order("resnet32_e") == search.order("resnet32_e")  # seeded
    # a random order per variant, not the grid's (of 8 variants' orders, not one alike)
    plan.recipes.update({v: recipes for v in ("a", "b", "c", "d", "e", "f", "g")})
    orders = {tuple(r.lr for r in search.order(v)) for v in plan.recipes}
    assert len(orders) > 1 and sorted(next(iter(orders))) == sorted(by_lr)
    # the rung is complete (every setting reached it or failed): its best goes on
    assert halving.decide(trials, search.rungs, 3, free=1, slots=1) == [(by_lr[0.03].id, 3)]


def test_a_setting_paused_at_its_rung_has_ended_for_the_phase(tmp_path):
    """A search that ended with one job failed and the rest paused at rungs is finished,
    not stuck: paused rows are ended, as done and failed ones are (only queued and
    running ones are left)."""
    from types import SimpleNamespace

    from ablation.jobqueue import JobQueue
    from ablation.policies import base
    from ablation.protocol import JobState

    rows = {"done": JobState.DONE, "failed": JobState.FAILED, "paused": JobState.PAUSED,
            "queued": None}
    with JobQueue(tmp_path) as q:
        ids = q.add([(JobKey("t8", "", 0, rid), {}) for rid in rows])
        for job_id, status in zip(ids, rows.values(), strict=True):
            if status is not None:
                q.finish(job_id, status)
    plan = lambda *rids, tag="": SimpleNamespace(  # noqa: E731
        results=tmp_path, jobs=lambda: [SimpleNamespace(key=JobKey("t8", tag, 0, r))
                                        for r in rids])
    assert base.unfinished(plan("done", "failed", "paused")) == 0
    assert base.unfinished(plan(*rows)) == 1
    # an interrupted row of an earlier definition of the unit (another tag) is not this
    # definition's: it never keeps the new definition's phase from ending (0.6 matched
    # rows without the tag)
    with JobQueue(tmp_path) as q:
        (old,) = q.add([(JobKey("t8", "olddef", 0, "done"), {})])
        q.finish(old, JobState.INTERRUPTED)
    assert base.unfinished(plan("done", tag="")) == 0
    assert base.unfinished(plan("done", tag="olddef")) == 1


def test_a_job_a_killed_command_queued_and_never_started_is_not_running(tmp_path):
    """The search treats a setting as running only when this step queued it or a live
    runner trains it: a row a killed command left queued is picked again on the rerun
    (never waited on forever)."""
    from ablation.jobqueue import JobQueue
    from ablation.policies import base

    with JobQueue(tmp_path) as q:
        (job_id,) = q.add([(JobKey("t8", "", 0, "r1"), {})])
    view = base.View(tmp_path, None)
    assert view.active() == set()
    assert replace(view, pending=(job_id,)).active() == {JobKey("t8", "", 0, "r1")}


def test_a_budget_alone_is_said_as_such_in_the_dry_run(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('name = "bud"\n[recipe]\nepochs = 4\n[tune]\nlr = [0.01, 0.1, 1.0]\n'
                     'budget = 8\nvalidation = 64\n[[comparison]]\ntitle = "x"\n'
                     'variants = ["resnet32_e", "resnet32_c"]\n')
    r = run_cli("run", "--study", str(study), "--all", "--dry-run", "--train-limit", "256",
                "--test-limit", "64", "--results", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert ("phase tune: every setting in full, at most 8 epochs a variant (the full grid: "
            "12 epochs a variant)") in r.stdout
    assert "go on" not in r.stdout  # no rungs, no promotion


def test_a_setting_that_failed_early_does_not_pull_the_expected_best_curve_back(tmp_path):
    """The curve is read at the epoch every setting that ran as planned reached: one run
    that failed after its first epoch is left out, not made everyone's last epoch."""
    from types import SimpleNamespace

    import pandas as pd

    from ablation.protocol import JobState
    from ablation.report import figures
    from ablation.report.tuned import _budget_curves

    def run(rid, accs, status=JobState.DONE):
        h = pd.DataFrame({"epoch": range(len(accs)), "validation_accuracy": accs})
        return SimpleNamespace(variant="a", history=h, record=SimpleNamespace(
            phase="tune", recipe_id=rid, status=status,
            trained=SimpleNamespace(warmup_epochs=0)))

    rs = [run("r1", [0.2, 0.4, 0.6]), run("r2", [0.3, 0.5, 0.7]), run("r3", [0.1, 0.2, 0.5]),
          run("r4", [0.9], JobState.FAILED)]
    lines = _budget_curves(rs, ["a"], None, tmp_path, "g", figures.colours(["a"]), ())
    assert "at epoch 3, which every setting that ran as planned reached" in " ".join(lines)
    assert (tmp_path / "expected-best.png").is_file()


def test_the_expected_best_estimator_is_unbiased():
    """Tang et al. 2020's estimator of E[max of k of the N trials] (without replacement)
    against the exact mean over all k-subsets, and Dodge et al.'s (with replacement)
    against simulation."""
    rng = np.random.default_rng(3)
    values = rng.normal(0.8, 0.05, 8)
    from itertools import combinations

    for k in (1, 3, 8):
        exact = np.mean([max(c) for c in combinations(values, k)])
        assert stats.expected_best(values, k) == pytest.approx(exact)
        draws = rng.choice(values, size=(200_000, k)).max(axis=1).mean()
        assert stats.expected_best(values, k, replace=True) == pytest.approx(draws, abs=2e-3)


def test_a_real_study_halves_resumes_a_rung_after_a_kill_and_reports_its_cost(
        tmp_path, cifar_dir, tiny):
    """tiny8 over 4 learning rates, 3 epochs, factor 3: every setting trains 1 epoch
    (lr 1e9 diverges there: a failed job, never promoted, and the search goes on), the
    best one goes on to 3, and is killed in its second epoch; the same command trains
    each epoch once and compares; status and the report say what happened, and what
    tuning spent."""
    study = tmp_path / "asha.toml"
    study.write_text('name = "asha"\n[recipe]\nepochs = 3\nbatch_size = 32\ntrain_limit = 128'
                     '\ntest_limit = 64\n[tune]\nlr = [0.01, 0.05, 0.2, 1e9]\nvalidation = 40\n'
                     'halving = { factor = 3, min_epochs = 1 }\n[[variant]]\nname = "a8"\n'
                     'base = "resnet32_e"\n'
                     'stages = [[1, 16], [1, 32], [1, 64]]\n[[comparison]]\ntitle = "a8"\n'
                     'variants = ["a8", "resnet32_e"]\n')
    res = tmp_path / "results"
    args = ["run", "--study", str(study), "a8", "--data-dir", str(cifar_dir), "--results",
            str(res)]
    p = start_cli(*args, env=hold_after(2))  # only the promoted setting reaches epoch 2
    held = lambda: (res / "runs").exists() and any(  # noqa: E731
        (r / HELD_MARKER).exists() and read_held((r / HELD_MARKER).read_text())[0] == 2
        for r in run_dirs(res))
    wait_for(held, "the promoted setting to hold in its second epoch", p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    r = run_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "successive halving, rungs at epochs 1, 3, factor 3" in r.stdout
    # 3 epochs of the blog's schedule drop the lr at epoch 2: a rung at 1 is said to come
    # before it (the default first rung would be past the drop, here no rung at all)
    assert "rung(s) 1 come before the step schedule's first lr drop (epoch 2)" in r.stdout
    tuned = {}
    for d in run_dirs(res):
        s = json.loads((d / "summary.json").read_text())
        epochs = [int(row.split(",")[0]) for row in
                  (d / "history.csv").read_text().splitlines()[1:]]
        assert epochs == list(range(len(epochs)))  # each epoch once, in order
        if s["phase"] == "tune":
            tuned[s["recipe"]["lr"]] = (s["status"], s["epochs_done"])
    assert sorted(tuned.values()) == [("done", 3), ("failed", 1), ("paused", 1),
                                      ("paused", 1)]
    assert tuned[1e9] == ("failed", 1)
    assert "tuning spent 6 epochs of the full grid's 12 (50 %)" in r.stdout
    status = run_cli("status", "--results", str(res))
    assert status.returncode == 0 and "diverged: the loss became NaN" in status.stdout
    out = tmp_path / "report"
    rep = run_cli("report", "--study", str(study), "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "README.md").read_text()
    assert "What tuning cost" in md and re.search(r"\|\s*a8\s*\|\s*6\s*\|\s*12\s*\|", md), md
    assert any(p.name == "expected-best.png" for p in out.rglob("*.png"))


def test_the_queue_eta_counts_the_rungs_the_search_still_plans():
    """0.6's ETA said "0 s" throughout halving: it counted only the jobs queued so far.
    With the epochs the search plans beyond them it counts those too."""
    import io

    from ablation import runner
    from ablation.protocol import PROGRESS_PREFIX, EpochRecord

    p = runner.Progress(1, out=io.StringIO())
    p.add({1: 3})
    line = EpochRecord(job=1, of=1, variant="v", seed=0, epoch=1, epochs=3, seconds=10.0,
                       eta_job=20.0, first=False).line()
    p.line(1, line[len(PROGRESS_PREFIX):])
    assert p.queue_eta() == pytest.approx(20.0)  # 2 epochs left, 10 s each
    p.planned = 12  # the search's rungs to come, the 2 in flight among them
    assert p.queue_eta() == pytest.approx(120.0)
