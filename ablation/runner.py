"""The one driver loop behind `ablation run`: a policy says what to queue, the loop
feeds an executor, prints progress with ETAs, records outcomes, keeps going when a job
fails, and asks the policy again.

Ray Tune's lesson: a policy (its schedulers, its searchers) never runs a job; it reads
what the runs recorded and answers "these jobs next" (`Queue`) or "done" (`Stop`). A
plain run, the tuning phases, `--until-decided`'s looks and successive halving are
policies (ablation.policies); one loop runs any of them on any executor (local, Ray,
Slurm). timm's bulk_runner lesson: one job per process, errors collected as rows, the
loop never stops for one bad job; the command exits non-zero at the end if any failed.

A policy is asked at the start and whenever the jobs it queued have all ended (a
step: a phase, a look); an asynchronous one is also asked after every job that ends,
and may add jobs to the running step, so no slot waits for a whole step to end. What a
policy may answer, and what it reads: `ablation.policies.base`.
"""

from __future__ import annotations

import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ablation import results
from ablation.executors import Executor, LineSink
from ablation.jobqueue import JobQueue
from ablation.plan import Plan, PlannedJob
from ablation.policies.base import Policy, Queue, Stop, View, on_disk
from ablation.protocol import EpochRecord, Exit, JobConfig, JobState, Terminated, diverged
from ablation.store import RunFolder

HEARTBEAT_SECONDS = 15.0


class Progress:
    """Formats per-epoch lines and estimates the queue's remaining time from the epoch
    times seen so far (per variant where known, else the overall median)."""

    def __init__(self, workers: int = 1, out=sys.stdout):
        self.left: dict[int, int] = {}  # job id -> epochs still to train
        self.labels: dict[int, str] = {}  # job id -> its setting, for a tuning job
        self.variant_of: dict[int, str] = {}
        self.epoch_s: dict[str, list[tuple[bool, float]]] = {}
        self.workers = max(1, workers)
        self.out = out
        self.lock = threading.Lock()
        # epochs a policy plans beyond the jobs queued so far (successive halving's rungs
        # to come), as it last said, counting those in flight: `queue_eta` adds the rest
        self.planned = 0

    def _estimate(self, variant: str | None) -> float | None:
        pool = self.epoch_s.get(variant or "") or [t for ts in self.epoch_s.values()
                                                   for t in ts]
        steady = [sec for first, sec in pool if not first]
        times = steady or [sec for _, sec in pool]
        return statistics.median(times[-20:]) if times else None

    def queue_eta(self) -> float | None:
        total = 0.0
        for job_id, left in self.left.items():
            est = self._estimate(self.variant_of.get(job_id))
            if est is None:
                return None
            total += left * est
        later = max(0, self.planned - sum(self.left.values()))
        if later:
            est = self._estimate(None)
            if est is None:
                return None
            total += later * est
        return total / self.workers

    def add(self, total_epochs: dict[int, int]) -> None:
        with self.lock:
            self.left.update(total_epochs)

    def forget(self, job_id: int) -> None:
        with self.lock:
            self.left.pop(job_id, None)

    def line(self, job_id: int, payload: str) -> None:
        p = EpochRecord.parse(payload)
        if p is None:
            return
        with self.lock:
            self.variant_of[job_id] = p.variant
            # the first epoch of a process includes graph tracing: used only until a
            # steady epoch of that variant is seen
            self.epoch_s.setdefault(p.variant, []).append((p.first, p.seconds))
            self.left[job_id] = p.epochs - p.epoch
            eta_q = self.queue_eta()

        def f(v: float | None, spec: str) -> str:
            return format(v, spec) if v is not None else "nan"

        print(f"[job {p.job}/{p.of}] {p.variant} s{p.seed}{self.labels.get(job_id, '')}"
              f"  epoch {p.epoch}/{p.epochs}"
              f"  loss {f(p.loss, '.4f')} acc {f(p.accuracy, '.4f')}"
              + (f" test_acc {f(p.val_accuracy, '.4f')}" if p.val_accuracy is not None
                 or p.validation_accuracy is None else "")
              + (f" valid_acc {f(p.validation_accuracy, '.4f')}"
                 if p.validation_accuracy is not None else "")
              + f" lr {f(p.lr, 'g')}"
              f"  {p.seconds:.1f}s  ETA job {results.duration(p.eta_job)}"
              f" queue {results.duration(eta_q)}", file=self.out, flush=True)


def prepare_jobs(plan: Plan, queue: JobQueue
                 ) -> tuple[list[int], dict[int, PlannedJob], dict[int, str]]:
    """Insert the plan's jobs; return their ids, what each id stands for, and what sets
    each apart in a progress line (a tuning candidate's setting)."""
    jobs = plan.jobs()
    settings = [plan.setting(j) for j in jobs]
    ids = queue.add([(j.key, j.recipe.to_dict()) for j in jobs],
                    retry_failed=plan.retry_failed)
    return ids, dict(zip(ids, jobs, strict=True)), dict(zip(ids, settings, strict=True))


# --- the loop -------------------------------------------------------------------------------


class _Step:
    """One step's jobs in the queue: which are done already, which to run, their index
    for progress lines, and the line that opens it."""

    def __init__(self, plan: Plan, queue: JobQueue, executor: Executor, progress: Progress,
                 out):
        self.queue = queue
        self.ids, self.planned, settings = prepare_jobs(plan, queue)
        status = {r.id: r.status for r in queue.all()}
        for i in self.ids:  # done, says the queue; a damaged record is rebuilt by its job
            why = status[i] == JobState.DONE and RunFolder(self.planned[i].run_dir).damaged()
            if why:
                print(f"{why}: its job rebuilds it from the run's files", file=out,
                      flush=True)
                queue.finish(i, JobState.QUEUED)
                status[i] = JobState.QUEUED
        todo = [i for i in self.ids if status[i] != JobState.DONE]
        skipped = len(self.ids) - len(todo)
        found = {i: state for i in todo if (state := on_disk(self.planned[i]))}
        for i, state in found.items():  # done by its own files: the queue learns it
            queue.finish(i, state)
        self.pending = [i for i in todo if i not in found]
        progress.add({i: self.planned[i].target for i in self.pending})
        self.labels = progress.labels
        self.labels.update(settings)
        print(f"{len(self.ids)} job(s): {skipped} already done, "
              + (f"{len(found)} found done in their run folders, " if found else "")
              + f"{len(self.pending)} to run with {executor.describe}; results in "
              f"{plan.results}", file=out, flush=True)
        self.skipped = skipped + len(found)
        self.index = {job_id: k + 1 for k, job_id in enumerate(self.ids)}
        self.plan = plan

    def extend(self, plan: Plan, progress: Progress) -> None:
        """More jobs for this step (an asynchronous policy's)."""
        ids, planned, settings = prepare_jobs(plan, self.queue)
        status = {r.id: r.status for r in self.queue.all()}
        new = [i for i in ids if i not in self.index]
        self.planned.update(planned)
        self.labels.update(settings)
        for i in new:
            self.ids.append(i)
            self.index[i] = len(self.ids)
        again = [i for i in ids if status[i] == JobState.QUEUED and i not in self.pending]
        for i in again:
            state = on_disk(self.planned[i])
            if state:  # a rung it reached already (a rerun after a kill)
                self.queue.finish(i, state)
        again = [i for i in again if self.queue.get(i).status == JobState.QUEUED]
        self.pending += again
        progress.add({i: self.planned[i].target for i in again})

    def config(self, job_id: int) -> JobConfig:
        return self.plan.config(self.planned[job_id], self.index[job_id], len(self.ids))

    def report(self, out, err) -> int:
        # a tuning setting that diverged is one of the search's outcomes (it is never
        # promoted nor chosen), not a failure of the command
        return _report(self.queue, self.ids, self.skipped, out, err,
                       outcome=self.plan.phase == "tune")


def drive(policy: Policy, view: View, executor_factory: Callable[[LineSink], Executor],
          out=sys.stdout, err=sys.stderr) -> int:
    """Run a policy to its end. Returns the process exit code (0, 1, 130 or 143).
    Progress goes to `out`; failures, and why jobs could not start, to `err`."""
    results.prepare_results(view.results)
    progress = Progress(1, out)
    executor: Executor | None = None
    with JobQueue(view.results) as queue:
        try:
            executor = executor_factory(progress.line)
            progress.workers = executor.size
            view = replace(view, slots=executor.size, free=executor.size)
            while True:
                view = replace(view, history=policy.needs_history)
                decision = policy.next(view)
                _say(decision, out, err)
                if isinstance(decision, Stop):
                    return view.code if decision.code is None else decision.code
                step = _Step(decision.plan, queue, executor, progress, out)
                view = replace(view, pending=tuple(step.pending))
                progress.planned = policy.remaining(view)
                machine, view = _run_step(step, policy, view, executor, progress, out, err)
                code = step.report(out, err)
                view = replace(view, step_code=code, code=max(view.code, code),
                               pending=tuple(step.pending))
                if machine is not None:
                    left = sum(queue.get(i).status in (JobState.INTERRUPTED, JobState.QUEUED)
                               for i in step.ids)
                    print(f"{left} job(s) not started: {machine}", file=err, flush=True)
                    return Exit.FAILED
        except KeyboardInterrupt as stop:
            return _stop(stop, queue, executor, out)
        finally:
            if executor is not None:
                executor.shutdown()


def _run_step(step: _Step, policy: Policy, view: View, executor: Executor,
              progress: Progress, out, err) -> tuple[str | None, View]:
    """Claim, submit and collect until nothing of the step we may claim is left (done,
    failed, or another runner's). Returns why jobs cannot start here, if they cannot,
    and the view as the step left it."""
    last_beat = time.monotonic()
    machine: str | None = None
    while True:
        while executor.capacity and step.pending and machine is None:
            job = step.queue.claim(step.pending, worker=executor.next_place())
            if job is None:
                break
            step.pending.remove(job.id)
            RunFolder(job.run_dir).write_config(step.config(job.id))
            executor.submit(job.id, Path(job.run_dir))
        if not executor.running():  # nothing left we may claim: done, failed, or another's
            return machine, view
        ended = executor.poll(timeout=1.0)
        for o in ended:
            step.queue.finish(o.job_id, o.status, o.error)
            progress.forget(o.job_id)
            machine = machine or (o.error if o.machine else None)
            job = step.queue.get(o.job_id)
            msg = (f"[job {step.index[o.job_id]}/{len(step.ids)}] {job.label} s{job.seed}"
                   f"{step.labels.get(o.job_id, '')}: {o.status}")
            print(msg + (f" ({o.error})" if o.error else ""), flush=True,
                  file=err if o.status == JobState.FAILED and not (
                      step.plan.phase == "tune" and diverged(o.error)) else out)
        if ended and policy.asynchronous and machine is None:
            view = replace(view, free=max(0, executor.capacity - len(step.pending)),
                           pending=tuple(step.pending))
            more = policy.extend(view)
            if more is not None:
                _say(more, out, err)
                step.extend(more.plan, progress)
            progress.planned = policy.remaining(view)
        if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
            step.queue.heartbeat(executor.running())
            last_beat = time.monotonic()


def _say(decision: Queue | Stop, out, err) -> None:
    """What a decision says: its warnings (stderr), its notes, then its header or
    closing message."""
    for w in decision.warnings:
        print(f"warning: {w}", file=err, flush=True)
    last = decision.header if isinstance(decision, Queue) else decision.message
    for line in (*decision.notes, *([last] if last else [])):
        print(line, file=out, flush=True)


def _stop(stop: KeyboardInterrupt, queue: JobQueue, executor: Executor | None, out) -> int:
    """Ctrl-C, or SIGTERM (a scheduler's preemption) as Ctrl-C: stop the running jobs at
    a safe point and mark them interrupted; a second signal waits for this."""
    cause = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    print(f"\ninterrupted by {cause}: stopping the running jobs (their last finished "
          "epoch is kept)", file=out, flush=True)
    running = executor.running() if executor is not None else []
    # a job that finished while stopping stays done; anything else is interrupted
    done = ({o.job_id for o in executor.cancel() if o.status == JobState.DONE}
            if executor is not None else set())
    for job_id in running:
        if job_id in done:
            queue.finish(job_id, JobState.DONE)
        else:
            queue.finish(job_id, JobState.INTERRUPTED,
                         f"interrupted by {cause}; rerun the same command to resume")
    print(f"{len(running)} job(s) marked interrupted; rerun the same command to resume",
          file=out, flush=True)
    return Exit.TERMINATED if cause == "SIGTERM" else Exit.INTERRUPTED


def _report(queue: JobQueue, ids: list[int], skipped: int, out, err,
            outcome: bool = False) -> int:
    """The step's end in one line, each failure on stderr; the step's exit code. With
    `outcome`, jobs that diverged are said apart and fail nothing."""
    rows = [queue.get(i) for i in ids]
    by = {s: [r for r in rows if r.status == s]
          for s in (JobState.DONE, JobState.FAILED, JobState.RUNNING, JobState.PAUSED)}
    gone = [r for r in by[JobState.FAILED] if outcome and diverged(r.error)]
    failed = [r for r in by[JobState.FAILED] if r not in gone]
    paused = by[JobState.PAUSED]
    print(f"finished: {len(by[JobState.DONE])} done ({skipped} from earlier runs), "
          + (f"{len(paused)} stopped at a rung, " if paused else "")
          + (f"{len(gone)} diverged (never promoted nor chosen), " if gone else "")
          + f"{len(failed)} failed, {len(by[JobState.RUNNING])} still running elsewhere",
          file=out, flush=True)
    for r in failed:
        print(f"  FAILED {r.label} s{r.seed}: {r.error} (log: {r.run_dir}/train.log)",
              file=err, flush=True)
    if failed:
        print("rerun with --retry-failed to try the failed jobs again", file=err, flush=True)
        return Exit.FAILED
    return Exit.DONE
