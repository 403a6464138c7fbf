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

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ablation import runs, study
from ablation.jobqueue import DB_NAME, JobQueue
from ablation.plan import Plan
from ablation.protocol import Exit, JobKey, JobState, RunRecord
from ablation.store import Run


def states(results_dir: Path) -> dict[JobKey, JobState]:
    """Every queued job's state by its key, without creating a queue where there is none
    (what a dry run holds its plan against)."""
    if not (Path(results_dir) / DB_NAME).exists():
        return {}
    with JobQueue(Path(results_dir)) as q:
        return {r.key: r.status for r in q.all()}


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
