"""Decisions as policies: what `ablation run` queues next, read from the run records.

A policy never runs a job (Ray Tune's schedulers answer CONTINUE or STOP the same way):
asked by the driver loop (`ablation.runner.drive`) with a view of the results folder, it
answers the next jobs to queue (`Queue`) or that it is done (`Stop`: ablation.policies.base). Its
decisions are replayed from the run folders, never stored apart from them, so a
Ctrl-C, a crash or a preemption resumes with the same command.

* `Fixed`: a plan's jobs, once (a plain `ablation run`);
* `UntilDecided` (`looks`): seeds in looks, more only where a pair is still undecided;
* `Tuned` (`tuned`): each variant's nuisance fields tuned on a validation split, then
  the variants compared at their own settings (by `Fixed` or `UntilDecided`).
"""

from __future__ import annotations

import json
import sys

from ablation.plan import Plan
from ablation.policies.base import Policy, Queue, Stop, View, planned_state, projection
from ablation.protocol import Exit, JobState


class Fixed(Policy):
    """A plan's jobs, once."""

    def __init__(self, plan: Plan, header: str = ""):
        self.plan, self.header, self.queued = plan, header, False

    def next(self, view: View) -> Queue | Stop:
        if self.queued:
            return Stop()
        self.queued = True
        return Queue(self.plan, self.header)

    def dry_run(self, view: View, out=sys.stdout) -> int:
        known = view.states()
        recipe = self.plan.recipe
        print(f"recipe {recipe.id}: {json.dumps(recipe.to_dict(), sort_keys=True)}", file=out)
        jobs = self.plan.jobs()
        list_jobs(jobs, known, out)
        left = [j for j in jobs if planned_state(j, known) != JobState.DONE]
        print(f"{len(jobs)} job(s){projection(self.plan, left)}; nothing was run "
              "(--dry-run)", file=out)
        return Exit.DONE


def list_jobs(jobs, known: dict, out, describe=None) -> None:
    """One line per planned job, with its state in the queue, else in its run folder
    (or new)."""
    for k, j in enumerate(jobs, 1):
        state = planned_state(j, known)
        extra = f"{describe(j)}  " if describe else ""
        print(f"{k:4d}  {j.variant.name:<14} seed {j.seed}  {extra}[{state}]  {j.run_dir}",
              file=out)
