"""`ablation`: a thin command line over studies, the runner, the reporter and the analyser.

Every user mistake ends in one line on stderr and a non-zero exit, never a traceback
(set ABLATION_DEBUG=1 to see the whole chain behind it, or a real bug's). The recipe
flags and their defaults come from `ablation.recipe.Recipe`; executor flags from each
executor class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from ablation.errors import AblationError
from ablation.protocol import Exit, JobState, Terminated
from ablation.results import DEFAULT_RESULTS

# `run --no-inference-timing` by default when set (to 1): a machine whose timings would
# mean nothing (shared, throttled), or a test suite
NO_INFERENCE_ENV = "ABLATION_NO_INFERENCE_TIMING"

# Only the standard library and two small modules above: `main` installs the signal
# handling before anything heavy loads, so Ctrl-C (or SIGTERM) at any moment is one line.


class _UsageError(AblationError):
    """A command-line mistake; printed as `PROG: error: ...`."""


class _Recorded:
    """An argument group that remembers the actions added to it (an executor's flags)."""

    def __init__(self, group):
        self.group, self.actions = group, []

    def add_argument(self, *args, **kwargs):
        action = self.group.add_argument(*args, **kwargs)
        self.actions.append(action)
        return action


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


def _study(args):
    from ablation.study import load_study

    return load_study(getattr(args, "study", None))


# --- list / studies -----------------------------------------------------------------------


def cmd_list(args) -> int:
    # list only counts (a unit's Keras layer may import TensorFlow): none of its logs,
    # errors included (a CPU-only machine's "failed call to cuInit"), is the user's
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from ablation import data, registry
    from ablation.models import count_params
    from ablation.study import DEFAULT as DEFAULT_STUDY

    study = _study(args)
    names = study.select(args.patterns) if args.patterns else study.variants()
    recipe = study.recipe()
    if args.classes:  # counted for a shape of the user's choosing: no data is read
        size = recipe.image_hw or (32, 32)
        shape, classes = (*size, 3), args.classes
    else:
        try:
            shape, classes = data.shape_of(recipe.dataset, recipe.image_hw)  # the study's
        except AblationError as e:
            raise AblationError(f"{e}; to count without it, give --classes N (the recipe's "
                                "image size is used)") from e
    rows = []
    for n in names:
        v, info = registry.get(n), count_params(n, classes, shape)
        rows.append({"name": n, "label": v.label, "depth": info.depth,
                     "params_total": info.params_total,
                     "params_trainable": info.params_trainable,
                     "params_non_trainable": info.params_non_trainable,
                     "macs": info.macs, "macs_unknown": list(info.unknown_macs),
                     "description": v.description})
    shadows = [f"{kind} {u!r} of {study.units_source} shadows the built-in {kind} {u!r} for "
               "this study's own variants"
               for kind, u in [*(("unit", u) for u in study.shadowed), *study.shadowed_parts]]
    if args.json:
        print(json.dumps(rows, indent=2))
        for line in shadows:
            print(f"note: {line}", file=sys.stderr)
        return 0
    from tabulate import tabulate

    print(tabulate([[r["name"], r["label"], r["depth"], f"{r['params_total']:,}",
                     f"{r['params_trainable']:,}", f"{r['params_non_trainable']:,}",
                     "unknown" if r["macs"] is None else f"{r['macs'] / 1e6:,.1f}M",
                     r["description"]] for r in rows],
                   headers=["name", "blog label" if study.name == DEFAULT_STUDY else "label",
                            "depth", "params", "trainable", "non-trainable", "MACs",
                            "description"],
                   colalign=("left", "left", "right", "right", "right", "right", "right",
                             "left")))
    print(f"\nstudy {study.name}: {study.description}" if study.description else "")
    if args.classes:
        print(f"counted for {'x'.join(map(str, shape))} images of {classes} classes "
              "(--classes; the dataset was not read)")
    elif (shape, classes) != ((32, 32, 3), 10):
        print(f"counted for its data, {recipe.dataset}: {'x'.join(map(str, shape))} images "
              f"of {classes} classes")
    for line in shadows:
        print(line)
    for r in rows:
        if r["macs_unknown"]:
            print(f"{r['name']}: multiply-adds unknown for {'; '.join(r['macs_unknown'])}")
    print("depth = weighted layers on the main path (stem, residual-branch convs, dense); "
          "MACs = multiply-adds per image (convolutions, dense layers, attention's products; "
          "another Keras layer's from its compiled form)"
          + ("; resnet152 is the blog's 3-4-36-3, 140 layers." if "resnet152" in names
             else "."))
    return 0


def cmd_studies(args) -> int:
    from tabulate import tabulate

    from ablation.study import builtin_names, load_study

    rows = []
    for name in builtin_names():
        s = load_study(name)
        rows.append([name, len(s.variant_names), len(s.comparisons), s.description])
    print(tabulate(rows, headers=["study", "variants", "comparisons", "description"]))
    print("\nuse one with --study NAME; your own study is a TOML file: --study FILE "
          "(docs/studies.md)")
    return 0


# --- run ----------------------------------------------------------------------------------


def _recipe_overrides(args) -> dict:
    """The recipe flags the user actually gave (the rest come from the study)."""
    from ablation.recipe import Recipe

    return {f.name: getattr(args, f.name) for f in fields(Recipe)
            if getattr(args, f.name, None) is not None}


def cmd_run(args) -> int:
    from ablation import devices, planning, runner
    from ablation.executors import EXECUTORS
    from ablation.policies.base import View

    if args.all and args.variants:
        raise AblationError("give variant names/globs or --all, not both")
    if not args.all and not args.variants:
        raise AblationError("name the variants to train (names or globs), or pass --all")
    study, overrides = _study(args), _recipe_overrides(args)
    planning.check_flags(args.seeds, args.until_decided, args.max_seeds)
    for name, actions in args.executor_flags.items():  # another executor's settings
        given = [a.option_strings[0] for a in actions
                 if name != args.executor and getattr(args, a.dest) != a.default]
        if given:
            raise AblationError(
                f"{given[0]} is a setting of --executor {name}, not of --executor "
                f"{args.executor}" + ("; add --executor " + name + " (without it the jobs "
                                      "run here, on this machine)"
                                      if args.executor == "local" else ""))
    devices.check_packing(args.devices_per_job, args.jobs_per_gpu)  # before anything is written
    names = study.variants() if args.all else study.select(args.variants)
    plan = planning.plan(study, names, overrides, Path(args.results),
                         args.data_dir, args.seeds or 1, keep_model=not args.no_keep_model,
                         retry_failed=args.retry_failed, dry_run=args.dry_run,
                         snapshot_steps=args.snapshot_every,
                         snapshot_minutes=args.snapshot_minutes,
                         local=(args.workers, args.jobs_per_gpu)
                         if args.dry_run and args.executor == "local" else None,
                         devices_per_job=args.devices_per_job,
                         inference=not args.no_inference_timing)
    policy = planning.policy(plan, study, args.seeds, args.until_decided, args.max_seeds,
                             args.margin)
    if args.dry_run:  # the jobs that would run at once: what halving's rule reads
        return policy.dry_run(View(plan.results, study, slots=plan.slots))
    view = View(plan.results, study)
    args.slurm_table = study.slurm  # the study's [slurm] table: --executor slurm's defaults
    executor = EXECUTORS[args.executor]()
    return runner.drive(policy, view, lambda sink: executor.from_args(args, sink))


# --- status -------------------------------------------------------------------------------


def cmd_status(args) -> int:
    from tabulate import tabulate

    from ablation import results
    from ablation.jobqueue import DB_NAME, JobQueue
    from ablation.store import RunFolder

    if not (results.existing(args.results) / DB_NAME).is_file():
        raise AblationError(f"no queue in {args.results}; start one with `ablation run`")
    with JobQueue(Path(args.results)) as q:
        rows = q.all()
        gone = {r.id: why for r in rows if (why := q.gone(r))}
    now = time.time()
    table = []
    for r in rows:
        took = ((r.finished or now) - r.started) if r.started else None
        folder = RunFolder(r.run_dir)
        done = folder.epochs()
        status, error = r.status, r.error or ""
        if r.id in gone:  # a runner killed outright (SIGKILL, a lost node) never said so
            status, error = f"{r.status} (gone)", gone[r.id]
        elif r.status == JobState.DONE and (why := folder.damaged()):
            status, error = "done (damaged record)", f"rerun to rebuild it: {why}"
        table.append([r.id, r.label, r.seed, r.recipe_id, folder.phase(), status, r.attempts,
                      f"{'?' if done is None else done}/{r.recipe.get('epochs')}",
                      r.worker or "",
                      results.duration(took) if took and r.id not in gone else "",
                      error[:70]])
    print(tabulate(table, headers=["id", "variant", "seed", "recipe", "phase", "status",
                                   "tries", "epochs", "where", "time", "error"]))
    print("  ".join(f"{s}: {sum(r.status == s for r in rows)}" for s in JobState)
          + (f"  (of the running, {len(gone)} gone)" if gone else ""))
    return 0


# --- report / analyze ---------------------------------------------------------------------


def cmd_report(args) -> int:
    from ablation import report

    out = report.build(Path(args.results), Path(args.out) if args.out else None,
                       recipe=args.recipe, epochs=args.epochs, study=_study(args),
                       margin=args.margin, on=args.on, latex=args.latex,
                       figure_format=args.figure_format)
    print(f"report written to {out}")
    return 0


def cmd_export(args) -> int:
    from ablation import export

    return export.to_mlflow(Path(args.results), _study(args), tracking_uri=args.tracking_uri,
                            experiment=args.experiment, models=args.models, margin=args.margin)


def _beside_training() -> None:
    """A process that loads trained models beside training jobs: one GPU, memory as
    needed, never most of every GPU."""
    from ablation import backend, devices

    os.environ.update(devices.shared_process_env())
    if not devices.list_gpus().ids:  # no GPU here: TensorFlow's CUDA errors are noise
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    backend.choose()


def cmd_analyze(args) -> int:
    _beside_training()
    from ablation import analyze

    study = _study(args)
    names = study.select(args.variants) if args.variants else study.variants()
    return analyze.main(Path(args.results), names, images=args.images, force=args.force,
                        data_dir=args.data_dir, recipe=args.recipe)


def cmd_evaluate(args) -> int:
    import dataclasses

    from ablation import robustness

    study = _study(args)
    names = study.select(args.variants) if args.variants else study.variants()
    settings = study.robustness
    given = {k: v for k, v in (("corruptions", args.corruptions), ("seed", args.seed),
                                ("severities", args.severities),
                                ("frost_images", args.frost_images)) if v is not None}
    if args.test_set:
        given["test_sets"] = (*[t for t in settings.test_sets
                                if t[0] not in dict(args.test_set)], *args.test_set)
    settings = dataclasses.replace(settings, **given)
    _beside_training()
    return robustness.main(Path(args.results), names, settings, images=args.images,
                           force=args.force, data_dir=args.data_dir, recipe=args.recipe)


# --- data ---------------------------------------------------------------------------------


def cmd_data_pack(args) -> int:
    from ablation.data import pack

    return pack.main(args)


# --- bench --------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    from ablation import bench, registry
    from ablation.study import load_builtins, load_study

    if args.study:
        study = load_study(args.study)
        names = study.select(args.variants) if args.variants else study.variants()
    else:  # any built-in study's variants
        names = registry.select(args.variants or ["resnet32_e"],
                                [n for s in load_builtins() for n in s.variant_names])
    return bench.main(names, precision=args.precision, steps=args.steps,
                      batch_size=args.batch_size, baseline=args.baseline,
                      data_dir=args.data_dir, repeats=args.repeats, study=args.study,
                      train_limit=args.train_limit, results_dir=Path(args.results),
                      augment_on=args.augment_on)


# --- parser -------------------------------------------------------------------------------


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Recipe field, parsed by its kind and checked by the recipe's schema
    (the same rule a study file's value meets); the default is the study's."""
    from ablation import argtypes
    from ablation.recipe import DEFAULTS, Recipe

    g = p.add_argument_group("recipe (defaults: the study's [recipe], else the blog's; "
                             "docs/studies.md)")
    for f in fields(Recipe):
        kind, flag = f.metadata["kind"], "--" + f.name.replace("_", "-")
        if kind == "internal":
            continue
        default = getattr(DEFAULTS, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_ = (f.metadata["help"] + ("" if default is None else f" (blog: {shown})")
                 ).replace("%", "%%")  # argparse formats help with %: "100 %" is no spec
        if kind == "bool":
            g.add_argument(flag, action=argtypes.Switch, default=None, help=help_)
        elif kind == "choice":
            g.add_argument(flag, choices=f.metadata["choices"], default=None, help=help_)
        else:
            g.add_argument(flag, type=argtypes.recipe_value(f.name, kind), default=None,
                           help=help_)


def _add_margin(p) -> None:
    from ablation import argtypes, verdict

    p.add_argument("--margin", type=argtypes.number("pos"), default=None, metavar="PP",
                   help=f"{verdict.Settings.__dataclass_fields__['margin'].metadata['help']} "
                        f"(default: the study's [analysis] margin, else "
                        f"{verdict.Settings().margin:g})")


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", metavar="NAME|FILE",
                   help="a built-in study (`ablation studies`) or a study TOML file "
                        "(default: blog)")


def _add_trained_runs(p: argparse.ArgumentParser) -> None:
    """Which trained runs a command reads (analyze, evaluate), and their data."""
    from ablation import argtypes

    p.add_argument("variants", nargs="*", metavar="VARIANT|GLOB",
                   help="default: every variant of the study")
    _add_study(p)
    p.add_argument("--results", type=argtypes.path, default=DEFAULT_RESULTS)
    p.add_argument("--recipe", help="only runs of this recipe id (or a prefix of it)")
    p.add_argument("--data-dir", type=argtypes.path, help="as for `ablation run`")


def build_parser() -> argparse.ArgumentParser:
    from ablation import argtypes, backend, devices, verdict
    from ablation.bench import MIN_SECONDS
    from ablation.executors import EXECUTORS
    from ablation.recipe import AUGMENT_ON, DEFAULTS, PRECISIONS

    p = _Parser(prog="ablation", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="list a study's variants with parameter counts")
    s.add_argument("patterns", nargs="*", help="names or globs (default: all)")
    s.add_argument("--json", action="store_true", help="print a JSON array")
    s.add_argument("--classes", type=argtypes.integer(2), default=None,
                   help="count for this many classes at the recipe's image size, without "
                        "reading the dataset (a study on data not here: ImageNet's 1000)")
    _add_study(s)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("studies", help="list the built-in studies")
    s.set_defaults(func=cmd_studies)

    s = sub.add_parser("run", help="train variants through the resumable job queue")
    s.add_argument("variants", nargs="*", metavar="VARIANT|GLOB")
    s.add_argument("--all", action="store_true", help="every variant of the study")
    _add_study(s)
    s.add_argument("--seeds", type=argtypes.integer(1, verdict.SEEDS_CAP), default=None,
                   help="seeds 0..N-1 (default 1)")
    g = s.add_argument_group("more seeds only where undecided (docs/statistics.md)")
    g.add_argument("--until-decided", action="store_true",
                   help="run seeds in looks (3, 5, 8, 12, ...) and add seeds only to the "
                        "variants of pairs still undecided")
    g.add_argument("--max-seeds", type=argtypes.integer(verdict.LOOKS[0], verdict.SEEDS_CAP),
                   default=None,
                   help=f"the last look (default {verdict.LOOKS[-1]})")
    _add_margin(g)
    _add_recipe_flags(s)
    s.add_argument("--data-dir", type=argtypes.path,
                   help="folder holding cifar-10-batches-py (or that folder); default "
                        "$ABLATION_DATA_DIR, else keras.datasets download")
    s.add_argument("--results", type=argtypes.path, default=DEFAULT_RESULTS)
    s.add_argument("--retry-failed", action="store_true", help="requeue failed jobs")
    s.add_argument("--no-keep-model", action="store_true",
                   help="save the .h5 to measure it, then delete it")
    s.add_argument("--no-inference-timing", action="store_true",
                   default=os.environ.get(NO_INFERENCE_ENV, "") not in ("", "0"),
                   help="do not time the trained networks' inference (images/s at batch "
                        "256, one image's latency; by default once per variant and device; "
                        f"also set by {NO_INFERENCE_ENV}=1)")
    s.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    g = s.add_argument_group("snapshots inside an epoch (a job killed mid-epoch goes on "
                             "from the last one; never the numbers)")
    g.add_argument("--snapshot-every", type=argtypes.integer(1), default=None, metavar="N",
                   help="also snapshot every N steps of an epoch (default: at each "
                        "epoch's end only)")
    g.add_argument("--snapshot-minutes", type=argtypes.number("pos"), default=None,
                   metavar="M", help="also snapshot after M minutes since the last one")
    s.add_argument("--executor", choices=list(EXECUTORS), default="local",
                   help="where jobs run (default: local subprocesses)")
    g = s.add_argument_group("devices (docs/performance.md; speed only, never the numbers)")
    g.add_argument("--jobs-per-gpu", type=argtypes.integer(1), default=None, metavar="K",
                   help="pack K jobs on each GPU, each with 1/K of its memory (default 1)")
    g.add_argument("--devices-per-job", type=argtypes.integer(1), default=1, metavar="N",
                   help="train each job data parallel on N GPUs, the recipe's batch the "
                        "global batch, batch-norm statistics synchronised (default 1; "
                        "without GPUs, N CPU devices)"),
    g.add_argument("--loader-threads", type=argtypes.integer(1), default=None, metavar="N",
                   help="input-pipeline threads per job (default: the host's cores / its "
                        f"jobs at once, 1 to {devices.MAX_LOADER_THREADS})")
    g.add_argument("--steps-per-execution", type=argtypes.integer(1), default=None,
                   metavar="N", help="most training steps per host-device sync, a divisor "
                                     "of the epoch's steps (default: "
                                     f"{backend.GPU_STEPS_PER_EXECUTION} on a GPU, 1 on a CPU)")
    flags = {}
    for name, load in EXECUTORS.items():
        flags[name] = _Recorded(s.add_argument_group(f"--executor {name}"))
        load().add_arguments(flags[name])
    s.set_defaults(func=cmd_run, executor_flags={n: g.actions for n, g in flags.items()})

    s = sub.add_parser("status", help="print the job queue as a table")
    s.add_argument("--results", type=argtypes.path, default=DEFAULT_RESULTS)
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("report", help="rebuild a study's comparisons from recorded runs")
    _add_study(s)
    s.add_argument("--results", type=argtypes.path, default=DEFAULT_RESULTS)
    s.add_argument("--out", type=argtypes.path,
                   help="default reports/ (the blog), reports/<study> otherwise")
    s.add_argument("--recipe", help="only this recipe id (or a prefix of it)")
    s.add_argument("--epochs", type=argtypes.integer(1), help="only recipes with this many epochs")
    s.add_argument("--on", choices=["test", "validation"], default="test",
                   help="the split tables, curves and verdicts read: the test set "
                        "(default), or the held-out validation split of recipes with one")
    s.add_argument("--latex", action="store_true",
                   help="also write each comparison's tables as booktabs LaTeX (.tex beside "
                        "its figures)")
    s.add_argument("--figure-format", choices=["png", "pdf", "svg"], default="png",
                   help="pdf or svg: also write each figure in that vector format beside its "
                        "PNG (the README keeps the PNGs)")
    _add_margin(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("export", help="send runs and verdicts elsewhere: an MLflow store")
    s.add_argument("target", choices=["mlflow"], help="where to: mlflow")
    _add_study(s)
    s.add_argument("--results", type=argtypes.path, default=DEFAULT_RESULTS)
    s.add_argument("--tracking-uri", type=argtypes.path, metavar="URI",
                   help="an MLflow tracking URI (default: MLflow's own, MLFLOW_TRACKING_URI "
                        "or its local store)")
    s.add_argument("--experiment", type=argtypes.path, metavar="NAME",
                   help="the MLflow experiment (default: ablation-<study>)")
    s.add_argument("--models", action="store_true",
                   help="also upload each run's saved .h5 model as an artifact")
    _add_margin(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("analyze", help="layer responses of trained runs (He et al. 2015, "
                                       "Fig. 7), for the report")
    _add_trained_runs(s)
    s.add_argument("--images", type=argtypes.integer(10), default=1000,
                   help="test images, class-balanced, the first of each class (default 1000)")
    s.add_argument("--force", action="store_true", help="recompute runs already analysed")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("evaluate", help="trained runs on corrupted (CIFAR-10-C) and extra "
                                        "test sets (CIFAR-10.1), for the report")
    _add_trained_runs(s)
    s.add_argument("--images", type=argtypes.integer(10),
                   help="test images, class-balanced, the first of each class (default: "
                        "the ones each run was evaluated on)")
    s.add_argument("--corruptions", type=argtypes.corruptions, metavar="generated|none|DIR",
                   help="the corrupted images: generated here, none, or the folder of the "
                        "released CIFAR-10-C files (default: the study's [robustness], "
                        "else generated)")
    s.add_argument("--severities", type=argtypes.severities, metavar="1,2,...",
                   help="the severities to evaluate (default: all five)")
    s.add_argument("--seed", type=argtypes.integer(0), help="of the generated corruptions "
                   "(default 0)")
    s.add_argument("--frost-images", type=argtypes.folder, metavar="DIR",
                   help="the paper's frost pictures, for its frost (default: a procedural "
                        "frost texture)")
    s.add_argument("--test-set", type=argtypes.named_path, action="append", metavar="NAME=PATH",
                   help="an extra test set: an .npz, a *_data.npy beside its *_labels.npy, "
                        "or a folder of class folders (repeatable; adds to the study's)")
    s.add_argument("--force", action="store_true", help="re-evaluate what was evaluated")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("data", help="prepare datasets: pack one into shards read from disk")
    data_sub = s.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    d = data_sub.add_parser(
        "pack", help="write a dataset as ArrayRecord shards that training streams from disk "
                     "(docs/datasets.md)")
    d.add_argument("source", metavar="SRC",
                   help="cifar10, cifar100, mnist, fashion_mnist, an .npz, or a folder of "
                        "images (train/ and test/ or val/ class folders; Tiny-ImageNet's "
                        "layout)")
    d.add_argument("dest", metavar="DEST", type=argtypes.path,
                   help="the packed dataset's folder (must not exist); train from it with "
                        "--dataset DEST")
    d.add_argument("--store", choices=["auto", "raw", "encoded"], default="auto",
                   help="raw pixels, or the image files' own bytes decoded when read "
                        "(default auto: raw for images of one size up to 64 px a side)")
    d.add_argument("--image-size", type=argtypes.recipe_value("image_size", "size"),
                   metavar="N|H,W", help="resize every image and store it raw")
    d.add_argument("--shard-mb", type=argtypes.number("pos"), default=256, metavar="MB",
                   help="about this many MiB a shard (default 256)")
    d.add_argument("--data-dir", type=argtypes.path, help="as for `ablation run`")
    d.set_defaults(func=cmd_data_pack)

    s = sub.add_parser("bench", help="time training steps; compare with the blog's Keras-2 path")
    s.add_argument("variants", nargs="*", metavar="VARIANT|GLOB",
                   help="default resnet32_e; any built-in study's variant")
    _add_study(s)
    s.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision)
    s.add_argument("--augment-on", choices=AUGMENT_ON, default=DEFAULTS.augment_on,
                   help="where ours augments: host (loader threads) or device (inside the "
                        "compiled step)")
    s.add_argument("--steps", type=argtypes.integer(2), default=None,
                   help=f"timed steps (default: as many as last at least {MIN_SECONDS:g} s "
                        "on this device)")
    s.add_argument("--batch-size", type=argtypes.integer(1), default=DEFAULTS.batch_size)
    s.add_argument("--repeats", type=argtypes.integer(1), default=3,
                   help="alternations of ours and the baseline (with --baseline)")
    s.add_argument("--baseline", action="store_true",
                   help="also time the blog's Keras-2 path (needs the baseline extra)")
    s.add_argument("--data-dir", type=argtypes.path,
                   help="real CIFAR-10 (default: generated images)")
    s.add_argument("--train-limit", type=argtypes.integer(1), default=None, metavar="N",
                   help="project the recipe on N training images (what `run --train-limit` "
                        "trains; default: the dataset's)")
    s.add_argument("--results", type=argtypes.path, default=DEFAULT_RESULTS,
                   help="where the measured speeds are kept (speeds.json), for `run "
                        "--dry-run`'s projections")
    s.set_defaults(func=cmd_bench)
    return p


def _version() -> str:
    from ablation import __version__

    return f"ablation {__version__}"


def _terminate(signum, frame) -> None:
    raise Terminated()


def _debug(e: BaseException) -> None:
    """Under ABLATION_DEBUG, the whole traceback before the one line: every exception
    it was raised from included (a user's unit failing inside the network, a damaged
    file's parser), so the author of a unit sees their own line."""
    if os.environ.get("ABLATION_DEBUG"):
        import traceback

        traceback.print_exception(e, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way it ends is one exit code, and a mistake one line on
    stderr. SIGTERM (a scheduler's preemption) is handled as Ctrl-C is; both are in
    place before anything heavy is imported."""
    import signal

    if signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:  # (the launcher's: replaced)
        signal.signal(signal.SIGTERM, _terminate)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except _UsageError as e:
        print(e, file=sys.stderr)
        return Exit.USAGE
    except AblationError as e:
        _debug(e)
        print(f"ablation: error: {e}", file=sys.stderr)
        return Exit.USAGE
    except Terminated:
        print("ablation: terminated (SIGTERM)", file=sys.stderr)
        return Exit.TERMINATED
    except KeyboardInterrupt:
        print("ablation: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as e:
        from ablation.results import disk_error

        print(f"ablation: error: {disk_error(e, Path(e.filename or '?'))}", file=sys.stderr)
        return Exit.FAILED
    except Exception as e:
        if os.environ.get("ABLATION_DEBUG"):
            raise
        print(f"ablation: internal error: {type(e).__name__}: {e} "
              "(rerun with ABLATION_DEBUG=1 for the traceback)", file=sys.stderr)
        return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main())
