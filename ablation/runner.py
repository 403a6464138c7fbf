"""The driver loop behind `ablation run`: queue the selected jobs, feed an executor,
print progress with ETAs, record outcomes, and keep going when a job fails.

timm's bulk_runner lesson: one job per process, errors collected as rows, the loop
never stops for one bad job. The command exits non-zero at the end if any failed.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ablation import results
from ablation.jobqueue import JobQueue
from ablation.recipe import Recipe
from ablation.training import Job

HEARTBEAT_SECONDS = 15.0


@dataclass
class Plan:
    variants: list[str]
    seeds: int
    recipe: Recipe
    results: Path
    data_dir: str | None
    keep_model: bool = True
    retry_failed: bool = False

    def jobs(self) -> list[tuple[str, int]]:
        return [(v, s) for v in self.variants for s in range(self.seeds)]


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Formats per-epoch lines and estimates the queue's remaining time from the epoch
    times seen so far (per variant where known, else the overall median)."""

    def __init__(self, total_epochs: dict[int, int], workers: int, out=sys.stdout):
        self.left = dict(total_epochs)  # job id -> epochs still to train
        self.variant_of: dict[int, str] = {}
        self.epoch_s: dict[str, list[tuple[bool, float]]] = {}
        self.workers = max(1, workers)
        self.out = out
        self.lock = threading.Lock()

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
        return total / self.workers

    def forget(self, job_id: int) -> None:
        with self.lock:
            self.left.pop(job_id, None)

    def line(self, job_id: int, payload: str) -> None:
        try:
            p = json.loads(payload)
        except ValueError:
            return
        with self.lock:
            v = p["variant"]
            self.variant_of[job_id] = v
            # the first epoch of a process includes graph tracing: used only until a
            # steady epoch of that variant is seen
            self.epoch_s.setdefault(v, []).append((bool(p.get("first")), p["seconds"]))
            self.left[job_id] = p["epochs"] - p["epoch"]
            eta_q = self.queue_eta()

        def f(key: str, spec: str) -> str:
            return format(p[key], spec) if p.get(key) is not None else "nan"

        print(f"[job {p['job']}/{p['of']}] {v} s{p['seed']}  epoch {p['epoch']}/{p['epochs']}"
              f"  loss {f('loss', '.4f')} acc {f('accuracy', '.4f')}"
              f" val_acc {f('val_accuracy', '.4f')} lr {f('lr', 'g')}"
              f"  {p['seconds']:.1f}s  ETA job {fmt_duration(p['eta_job'])}"
              f" queue {fmt_duration(eta_q)}", file=self.out, flush=True)


def prepare_jobs(plan: Plan, queue: JobQueue) -> list[int]:
    """Insert the plan's jobs, write each run's config.json, return the job ids."""
    rid = plan.recipe.id
    rows = []
    for variant, seed in plan.jobs():
        rd = results.run_dir(plan.results, rid, variant, seed)
        rows.append((variant, seed, rid, plan.recipe.to_dict(), str(rd)))
    return queue.add(rows, retry_failed=plan.retry_failed)


def run(plan: Plan, executor_factory, out=sys.stdout) -> int:
    """Run the plan to completion. Returns the process exit code (0, 1 or 130)."""
    results.prepare_results(plan.results)
    with JobQueue(plan.results) as queue:
        ids = prepare_jobs(plan, queue)
        status = {r.id: r.status for r in queue.all()}
        todo = [i for i in ids if status[i] != "done"]
        skipped = len(ids) - len(todo)
        progress = Progress({i: plan.recipe.epochs for i in todo}, 1, out)
        executor = executor_factory(progress.line)
        progress.workers = executor.size
        print(f"{len(ids)} job(s): {skipped} already done, {len(todo)} to run with "
              f"{executor.describe}; results in {plan.results}", file=out, flush=True)
        index = {job_id: k + 1 for k, job_id in enumerate(ids)}
        last_beat = time.monotonic()
        pending = list(todo)
        try:
            while True:
                while executor.capacity and pending:
                    job = queue.claim(pending, worker=executor.describe)
                    if job is None:
                        break
                    pending.remove(job.id)
                    rd = Path(job.run_dir)
                    cfg = Job.config(job.variant, job.seed, plan.recipe, plan.data_dir,
                                     plan.keep_model, index[job.id], len(ids))
                    results.atomic_write_json(rd / "config.json", cfg)
                    executor.submit(job.id, rd)
                if not executor.running():
                    break  # nothing left we may claim: done, failed, or another runner's
                for o in executor.poll(timeout=1.0):
                    queue.finish(o.job_id, o.status, o.error)
                    progress.forget(o.job_id)
                    job = queue.get(o.job_id)
                    msg = (f"[job {index[o.job_id]}/{len(ids)}] {job.variant} s{job.seed}:"
                           f" {o.status}")
                    print(msg + (f" ({o.error})" if o.error else ""), file=out, flush=True)
                if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                    queue.heartbeat(executor.running())
                    last_beat = time.monotonic()
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the running jobs (their last finished epoch is kept)",
                  file=out, flush=True)
            running = executor.running()
            # a job that finished while stopping stays done; anything else is interrupted
            done = {o.job_id for o in executor.cancel() if o.status == "done"}
            for job_id in running:
                status = "done" if job_id in done else "interrupted"
                queue.finish(job_id, status, None if status == "done" else
                             "interrupted by Ctrl-C; rerun the same command to resume")
            executor.shutdown()
            print(f"{len(running)} job(s) marked interrupted; rerun the same command to resume",
                  file=out, flush=True)
            return 130
        executor.shutdown()
        return _report(queue, ids, skipped, out)


def _report(queue: JobQueue, ids: list[int], skipped: int, out) -> int:
    rows = [queue.get(i) for i in ids]
    by = {s: [r for r in rows if r.status == s] for s in ("done", "failed", "running")}
    print(f"finished: {len(by['done'])} done ({skipped} from earlier runs), "
          f"{len(by['failed'])} failed, {len(by['running'])} still running elsewhere",
          file=out, flush=True)
    for r in by["failed"]:
        print(f"  FAILED {r.variant} s{r.seed}: {r.error} (log: {r.run_dir}/train.log)",
              file=out, flush=True)
    if by["failed"]:
        print("rerun with --retry-failed to try the failed jobs again", file=out, flush=True)
        return 1
    return 0
