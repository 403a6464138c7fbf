"""`ablation`: a thin command line over the registry, the runner and the reporter.

Every user mistake ends in one line on stderr and a non-zero exit, never a traceback
(set ABLATION_DEBUG=1 to see one for a real bug).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ablation import registry
from ablation.errors import AblationError


class _UsageError(AblationError):
    """A command-line mistake; printed as `PROG: error: ...`."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


def _int(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v
    return parse


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    if s.strip() in ("0", "0.0"):
        return 0.0
    return _positive_float(s)


# --- list ---------------------------------------------------------------------------------


def cmd_list(args) -> int:
    from ablation.models import count_params

    names = registry.select(args.patterns) if args.patterns else registry.variants()
    rows = []
    for n in names:
        v, info = registry.get(n), count_params(n)
        rows.append({"name": n, "label": v.label, "depth": info.depth,
                     "params_total": info.params_total,
                     "params_trainable": info.params_trainable,
                     "params_non_trainable": info.params_non_trainable,
                     "description": v.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from tabulate import tabulate

    print(tabulate([[r["name"], r["label"], r["depth"], f"{r['params_total']:,}",
                     f"{r['params_trainable']:,}", f"{r['params_non_trainable']:,}",
                     r["description"]] for r in rows],
                   headers=["name", "blog label", "depth", "params", "trainable",
                            "non-trainable", "description"],
                   colalign=("left", "left", "right", "right", "right", "right", "left")))
    print("\ndepth = weighted layers on the main path (stem, residual-branch convs, dense); "
          "resnet152 is the blog's 3-4-36-3, 140 layers.")
    return 0


# --- run ----------------------------------------------------------------------------------


def _recipe(args):
    from ablation.recipe import Recipe

    return Recipe(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, weight_decay=args.weight_decay, augment=args.augment,
                  train_limit=args.train_limit, test_limit=args.test_limit,
                  precision=args.precision)


def cmd_run(args) -> int:
    from ablation import data, results, runner
    from ablation.jobqueue import JobQueue

    if args.all and args.variants:
        raise AblationError("give variant names/globs or --all, not both")
    if not args.all and not args.variants:
        raise AblationError("name the variants to train (names or globs), or pass --all")
    names = registry.variants() if args.all else registry.select(args.variants)
    recipe = _recipe(args)
    data_dir = data.resolve_data_dir(recipe.dataset, args.data_dir)
    plan = runner.Plan(names, args.seeds, recipe, Path(args.results),
                       str(data_dir.resolve()) if data_dir else None,
                       keep_model=not args.no_keep_model, retry_failed=args.retry_failed)
    if args.dry_run:
        known = {}
        db = Path(args.results) / "queue.sqlite"
        if db.exists():
            with JobQueue(Path(args.results)) as q:
                known = {(r.variant, r.seed, r.recipe_id): r.status for r in q.all()}
        print(f"recipe {recipe.id}: {json.dumps(recipe.to_dict(), sort_keys=True)}")
        for k, (v, s) in enumerate(plan.jobs(), 1):
            status = known.get((v, s, recipe.id), "new")
            print(f"{k:4d}  {v:<14} seed {s}  [{status}]  "
                  f"{results.run_dir(plan.results, recipe.id, v, s)}")
        print(f"{len(plan.jobs())} job(s); nothing was run (--dry-run)")
        return 0
    if data_dir is not None:
        data.check(recipe.dataset, data_dir)
    from ablation import executors

    if args.executor == "ray":
        from ablation import ray_executor

        def factory(sink):
            return ray_executor.RayExecutor(args.ray_address, sink, args.ray_gpus,
                                            args.ray_cpus, args.ray_retries)
    else:
        def factory(sink):
            return executors.LocalExecutor(args.workers, sink)

    return runner.run(plan, factory)


# --- status -------------------------------------------------------------------------------


def cmd_status(args) -> int:
    from tabulate import tabulate

    from ablation.jobqueue import DB_NAME, JobQueue
    from ablation.runner import fmt_duration

    if not (Path(args.results) / DB_NAME).is_file():
        raise AblationError(f"no queue in {args.results}; start one with `ablation run`")
    with JobQueue(Path(args.results)) as q:
        rows = q.all()
    now = time.time()
    table = []
    for r in rows:
        took = None
        if r.started:
            took = (r.finished or now) - r.started
        table.append([r.id, r.variant, r.seed, r.recipe_id, r.status, r.attempts,
                      _epochs_done(r.run_dir, r.recipe.get("epochs")),
                      fmt_duration(took) if took else "",
                      (r.error or "")[:70]])
    print(tabulate(table, headers=["id", "variant", "seed", "recipe", "status", "tries",
                                   "epochs", "time", "error"]))
    counts = {s: sum(r.status == s for r in rows) for s in
              ("queued", "running", "done", "failed", "interrupted")}
    print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def _epochs_done(run_dir: str, planned) -> str:
    try:
        with open(Path(run_dir) / "history.csv") as f:
            done = max(0, sum(1 for _ in f) - 1)
    except OSError:
        done = 0
    return f"{done}/{planned}"


# --- report -------------------------------------------------------------------------------


def cmd_report(args) -> int:
    from ablation import report

    out = report.build(Path(args.results), Path(args.out), recipe=args.recipe,
                       epochs=args.epochs)
    print(f"report written to {out}")
    return 0


# --- bench --------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    from ablation import bench

    names = registry.select(args.variants) if args.variants else ["resnet32_e"]
    return bench.main(names, precision=args.precision, steps=args.steps,
                      batch_size=args.batch_size, baseline=args.baseline,
                      data_dir=args.data_dir, repeats=args.repeats)


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ablation", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="list the registered variants with parameter counts")
    s.add_argument("patterns", nargs="*", help="names or globs (default: all)")
    s.add_argument("--json", action="store_true", help="print a JSON array")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("run", help="train variants through the resumable job queue")
    s.add_argument("variants", nargs="*", metavar="VARIANT|GLOB")
    s.add_argument("--all", action="store_true", help="every registered variant")
    s.add_argument("--seeds", type=_int(1), default=1, help="seeds 0..N-1 (default 1)")
    s.add_argument("--epochs", type=_int(1), default=200)
    s.add_argument("--batch-size", type=_int(1), default=128)
    s.add_argument("--lr", type=_positive_float, default=0.1)
    s.add_argument("--weight-decay", type=_nonneg_float, default=1e-4,
                   help="L2 coefficient on conv and dense kernels (default 1e-4)")
    s.add_argument("--augment", choices=["blog", "crop"], default="blog")
    s.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    s.add_argument("--data-dir", help="folder holding cifar-10-batches-py (or that folder); "
                                      "default $ABLATION_DATA_DIR, else keras.datasets download")
    s.add_argument("--train-limit", type=_int(1), help="class-balanced train subset size")
    s.add_argument("--test-limit", type=_int(1), help="class-balanced test subset size")
    s.add_argument("--results", default="results")
    s.add_argument("--workers", type=_int(1), help="jobs at once (default: one per GPU, or 1)")
    s.add_argument("--retry-failed", action="store_true", help="requeue failed jobs")
    s.add_argument("--no-keep-model", action="store_true",
                   help="save the .h5 to measure it, then delete it")
    s.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    s.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local subprocesses (default) or tasks on a Ray cluster")
    s.add_argument("--ray-address", help="Ray cluster address, e.g. auto (default: start "
                                         "a local Ray instance)")
    s.add_argument("--ray-gpus", type=_nonneg_float, default=None,
                   help="GPUs per Ray task (default: 1 if the cluster has GPUs, else 0)")
    s.add_argument("--ray-cpus", type=_positive_float, default=1.0, help="CPUs per Ray task")
    s.add_argument("--ray-retries", type=_int(0), default=3,
                   help="Ray retries of a job whose worker died (default 3)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="print the job queue as a table")
    s.add_argument("--results", default="results")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("report", help="rebuild the blog's comparisons from recorded runs")
    s.add_argument("--results", default="results")
    s.add_argument("--out", default="reports")
    s.add_argument("--recipe", help="only this recipe id (or a prefix of it)")
    s.add_argument("--epochs", type=_int(1), help="only recipes with this many epochs")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("bench", help="time training steps; compare with the blog's Keras-2 path")
    s.add_argument("variants", nargs="*", metavar="VARIANT|GLOB",
                   help="default resnet32_e")
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    s.add_argument("--steps", type=_int(2), default=30, help="timed steps (default 30)")
    s.add_argument("--batch-size", type=_int(1), default=128)
    s.add_argument("--repeats", type=_int(1), default=3,
                   help="alternations of ours and the baseline (with --baseline)")
    s.add_argument("--baseline", action="store_true",
                   help="also time the blog's Keras-2 path (needs the baseline extra)")
    s.add_argument("--data-dir", help="real CIFAR-10 (default: generated images)")
    s.set_defaults(func=cmd_bench)
    return p


def _version() -> str:
    from ablation import __version__

    return f"ablation {__version__}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except AblationError as e:
        print(f"ablation: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablation: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        from ablation.results import disk_error

        print(f"ablation: error: {disk_error(e, Path(e.filename or '?'))}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("ABLATION_DEBUG"):
            raise
        print(f"ablation: internal error: {type(e).__name__}: {e} "
              "(rerun with ABLATION_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
