"""The policy contract: what the driver loop (ablation.runner) asks of a decision, and
what a decision reads and answers. Ray Tune's `TrialScheduler` lesson: every hook a
policy may answer is declared here with its default, so the loop asks each directly.

* a policy answers `next(view)` with `Queue` (these jobs next, a step: a phase, a look)
  or `Stop` (done), each carrying the lines to say: the policy never prints;
* an asynchronous policy (`asynchronous`) is also asked `extend(view)` after every job
  that ends, and may add jobs to the running step, so no slot waits for a step to end;
* `remaining(view)`: epochs it plans beyond the jobs queued (the queue's ETA);
* `first_look()`: the seeds its first step runs (a dry run's count);
* `dry_run(view, out)`: what it would run, printed to `out`.

`View` is what a policy reads of the results folder: the study's runs (read once per
question), the queue's states, the executor's slots, the exit code so far. Only the
driver changes it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ablation import results, runs, study
from ablation.jobqueue import DB_NAME, JobQueue
from ablation.plan import Plan, PlannedJob
from ablation.protocol import NEW, Exit, JobKey, JobState, RunRecord
from ablation.store import Run, RunFolder


def states(results_dir: Path) -> dict[JobKey, JobState]:
    """Every queued job's state by its key, without creating a queue where there is none
    (what a dry run holds its plan against)."""
    if not (Path(results_dir) / DB_NAME).exists():
        return {}
    with JobQueue(Path(results_dir)) as q:
        return {r.key: r.status for r in q.all()}


def on_disk(job: PlannedJob) -> JobState | None:
    """A run folder whose record says done (or paused at a rung), its target epoch
    trained: the queue that knew it may have been lost (a damaged queue moved aside, a
    results folder copied without it), or a rerun asks again for a rung a job already
    reached; the run was not. The runner skips it; a dry run says so."""
    return RunFolder(job.run_dir).reached(job.target)


def planned_state(job: PlannedJob, known: dict[JobKey, JobState]) -> str:
    """A planned job's state for a dry run: the queue's, else its run folder's, else
    new."""
    return known.get(job.key) or on_disk(job) or NEW


ENDED = (JobState.DONE, JobState.FAILED, JobState.PAUSED)


def unfinished(plan: Plan) -> int:
    """How many of the plan's queued jobs have not ended, done, failed or paused at a
    rung: a phase or a look is judged only when none is left (a failed job is run; it
    does not stall it; a paused one goes on only if the search promotes it)."""
    with JobQueue(plan.results) as q:
        jobs = {j.key for j in plan.jobs()}
        return sum(r.status not in ENDED for r in q.all() if r.key in jobs)


# --- what a policy answers, and what it reads ----------------------------------------------


@dataclass(frozen=True)
class Queue:
    """Run these jobs next (a step: a phase, a look), after saying `notes` and `header`
    (and `warnings` on stderr)."""

    plan: Plan
    header: str = ""
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def after(self, notes: list[str] | tuple[str, ...], warnings=()) -> Queue:
        """The same step, said after `notes` (what a decision found before it)."""
        return replace(self, notes=(*notes, *self.notes),
                       warnings=(*warnings, *self.warnings))


@dataclass(frozen=True)
class Stop:
    """Nothing more to run: say `notes` then `message` (`warnings` on stderr); exit with
    `code` (None: the worst code of the steps run, 1 if any job failed)."""

    message: str = ""
    code: int | None = None
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def after(self, notes: list[str] | tuple[str, ...], warnings=()) -> Stop:
        return replace(self, notes=(*notes, *self.notes),
                       warnings=(*warnings, *self.warnings))


Decision = Queue | Stop


class Policy:
    """What the driver loop asks of a decision; the defaults are a synchronous policy's
    (ablation.policies has the policies)."""

    #: the runs' histories are read too (a policy that ranks curves, not records)
    needs_history: bool = False

    @property
    def asynchronous(self) -> bool:
        """Asked `extend` after every job that ends, not only when a step ends."""
        return False

    def next(self, view: View) -> Decision:
        raise NotImplementedError

    def extend(self, view: View) -> Queue | None:
        """More jobs for the running step's free slots (an asynchronous policy's)."""
        return None

    def remaining(self, view: View) -> int:
        """Epochs planned beyond the jobs queued so far (for the queue's ETA)."""
        return 0

    def first_look(self) -> int | None:
        """The seeds the first step runs, where the policy chooses them (None: the
        plan's)."""
        return None

    def seeds_words(self) -> str | None:
        """How the policy chooses its seeds, in words, where it does (None: the plan's)."""
        return None

    def dry_run(self, view: View, out=sys.stdout) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class View:
    """What a policy reads, read-only: the study's run records in the results folder
    (read once per view), the queue's states, the executor's slots and the exit codes so
    far. The driver makes a new view when any of it changes (`dataclasses.replace`), so
    a new view reads the records again."""

    results: Path
    study: study.Study
    code: int = Exit.DONE  # the worst exit code of the steps run so far
    step_code: int = Exit.DONE  # the last step's
    slots: int = 1  # jobs the executor runs at once
    free: int = 1  # of them, free now (what an asynchronous policy may fill)
    history: bool = False  # read the runs' histories too (a policy that needs curves)
    pending: tuple[int, ...] = ()  # the step's queued jobs, not started
    _runs: list = field(default_factory=list, init=False, repr=False, compare=False)

    def runs(self) -> list[Run]:
        """The study's runs as they are on disk when first asked: records only, unless
        `history`."""
        if not self._runs:  # the view's own memo, not its state
            self._runs.append(runs.study_runs(self.results, self.study,
                                              history=self.history))
        return self._runs[0]

    def records(self) -> list[RunRecord]:
        return [r.record for r in self.runs()]

    def unfinished(self, plan: Plan) -> int:
        return unfinished(plan)

    def states(self) -> dict[JobKey, JobState]:
        return states(self.results)

    def active(self) -> set[JobKey]:
        """The jobs this step has queued, or running under a runner that is alive. A job
        whose runner was killed is not active: it waits to resume; nor is one a killed
        command queued and never started."""
        if not (Path(self.results) / DB_NAME).exists():
            return set()
        with JobQueue(Path(self.results)) as q:
            return {r.key for r in q.all()
                    if (r.status == JobState.QUEUED and r.id in self.pending)
                    or (r.status == JobState.RUNNING and not q.gone(r))}

    @property
    def failed(self) -> int:
        """The code a policy stops with when its step did not finish: the step's own
        failure, else 1."""
        return self.step_code if self.step_code != Exit.DONE else Exit.FAILED


def train_images(plan: Plan) -> int:
    """The training images a job of `plan` sees an epoch (its limit, the dataset's, or
    CIFAR's 50,000, less a held-out validation split)."""
    images = plan.recipe.train_limit or (plan.data or {}).get("train_images") or 50_000
    return images - (plan.recipe.validation if not plan.recipe.train_limit else 0)


def projection(plan: Plan, jobs: list) -> str:
    """What `jobs` (not yet done) would take here: each variant's training speed where
    runs here (or `ablation bench`) measured it, else the measured variant nearest in
    multiply-adds scaled by their ratio (a design space's models: none measured
    themselves), times what whole runs here took beyond their steps."""
    from ablation import data, models, registry

    if not jobs:
        return ""
    speed = runs.speeds(plan.results, plan.recipe.precision, plan.recipe.image_hw)
    shape, classes = data.shape_of(plan.recipe.dataset, plan.recipe.image_hw)

    counted: dict[str, int | None] = {}  # a variant's, once however many seeds it has

    def macs(v) -> int | None:
        if v.name not in counted:
            counted[v.name] = models.count_params(v, classes, shape).macs
        return counted[v.name]

    def known(name: str):  # a variant of this study, or of the built-in study it is in
        home = study.builtin_home(name) if registry.lookup(name) is None else None
        if home:
            study.load_study(home)
        return registry.lookup(name)

    measured = [(s, m) for n, s in speed.items()
                if (v := known(n)) is not None and (m := macs(v))]
    if not speed or not measured:
        if plan.recipe.image_hw and runs.speeds(plan.results, plan.recipe.precision):
            return (f"; no speed measured at {'x'.join(map(str, plan.recipe.image_hw))} px in "
                    f"{plan.results} yet (its runs trained at another image size)")
        return (f"; no speed measured in {plan.results} yet (`ablation bench --results "
                f"{plan.results}` measures one)")
    seconds, scaled, unknown = 0.0, 0, 0
    for j in jobs:
        v = j.variant
        if v.name in speed:
            ips = speed[v.name].images_per_second
        elif (m := macs(v)) is None:
            unknown += 1
            continue
        else:
            s, near = min(measured, key=lambda sm, m=m: abs(math.log(sm[1] / m)))
            ips, scaled = s.images_per_second * near / m, scaled + 1
        seconds += v.train_recipe(j.recipe).epochs * train_images(plan) / ips
    overhead = next(iter(speed.values())).overhead
    return (f"; about {results.duration(seconds * overhead)} of training here"
            + (f" ({scaled} job(s) at the speed of the measured variant nearest in "
               "multiply-adds, scaled by their ratio)" if scaled else "")
            + (f"; {unknown} job(s) of unknown multiply-adds not counted" if unknown else ""))
