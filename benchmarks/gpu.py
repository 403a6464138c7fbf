"""The GPU benchmark: one command, a markdown table out, within a time budget (8 minutes
by default), nothing downloaded.

    python benchmarks/gpu.py [--data-dir DIR] [--out gpu.md]

Every figure is a fresh `python -m ablation.bench` process (the harness's compiled
training step, after a warm-up; training steps only), placed on the machine's GPUs as
the local executor places jobs:

1. img/s of `resnet32_e` and `resnet50` in fp32 and bf16, the blog's augmentation on
   the host and on the device (`--augment-on`), on the first GPU;
2. K = 1, 2, 4, 8 jobs packed on the first GPU at once (`--jobs-per-gpu K`'s memory
   settings), `resnet32_e` bf16 with device augmentation: each job's img/s and their sum;
3. with several GPUs, one job data parallel over N = 2 (and all) of them
   (`--devices-per-job N`), at 128 images per device (`--batch`);
4. one epoch of ResNet-32's training steps at full speed (bf16, device augmentation):
   50,000 images (CIFAR-10's training set, with `--data-dir`) or the generated set's
   10,000, timed.

Parts 2 to 4 train the first of `--variants`, in bf16 where `--precisions` names it
(else in its first). Without `--data-dir` the images are generated (the harness's
synthetic set). Each part that would overrun the budget is skipped, and the table says
so. On a machine without GPUs the same parts run on the CPU (what
tests/test_gpu_benchmark.py does, with a fake `nvidia-smi`, fp32 and a batch of 32): the
figures then say nothing about a GPU, and the table says where it ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ablation import devices
from ablation.protocol import JobEnv, module_command

VARIANTS = ("resnet32_e", "resnet50")
PRECISIONS = ("fp32", "bf16")
PACKED = (1, 2, 4, 8)
BATCH = 128
GENERATED_IMAGES = 10_000


@dataclass
class Bench:
    """Runs the measurements, keeps the rows and the time spent."""

    steps: int
    budget_s: float
    data_dir: str | None
    gpus: devices.GpuListing
    study: str | None = None
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def env(self, gpus: list[str], sharing: int = 1) -> dict[str, str]:
        """A measurement's environment, as the local executor gives a job its GPUs."""
        env = devices.job_env(os.environ, ",".join(gpus) if gpus else None, sharing,
                              self.gpus.pci_order)
        env.pop(JobEnv.GPU, None)  # a measurement: it may run where no GPU is seen
        return env

    def start(self, variant: str, precision: str, where: str, gpus: list[str],
              sharing: int = 1, devices_per_job: int = 1, steps: int | None = None,
              batch: int = BATCH) -> subprocess.Popen:
        cmd = module_command("ablation.bench", variant, precision, str(steps or self.steps),
                             str(batch), self.data_dir or "", self.study or "", where,
                             str(devices_per_job))
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env(gpus, sharing))

    @staticmethod
    def result(p: subprocess.Popen) -> dict:
        out, err = p.communicate()
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {p.returncode}: {tail}"}

    def fits(self, part: str, estimate_s: float) -> bool:
        if self.left() >= estimate_s:
            return True
        self.notes.append(f"{part}: skipped, {self.left():.0f} s of the budget left "
                          f"(it takes about {estimate_s:.0f} s)")
        return False


def fmt(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['images_per_second']:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="the folder holding cifar-10-batches-py/ (default: "
                                       "generated images)")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    ap.add_argument("--budget-minutes", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per figure")
    ap.add_argument("--batch", type=int, default=BATCH, help="images per device a step")
    ap.add_argument("--epoch-images", type=int, default=None,
                    help="the timed epoch's images (default: 50,000 with --data-dir, "
                         f"else {GENERATED_IMAGES:,})")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="part 1's networks")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--packed", default=",".join(map(str, PACKED)),
                    help="part 2's numbers of jobs on one GPU")
    ap.add_argument("--study", help="a study file defining the variants named")
    ap.add_argument("--gpus-per-job", default=None,
                    help="part 3's GPUs per job (default: 1, 2 and all of them)")
    args = ap.parse_args(argv)
    gpus = devices.list_gpus()
    b = Bench(args.steps, args.budget_minutes * 60, args.data_dir, gpus, args.study)
    variants, precisions = args.variants.split(","), args.precisions.split(",")
    one = variants[0]  # parts 2 to 4's network and precision
    prec_one = "bf16" if "bf16" in precisions else precisions[0]
    batch = args.batch
    first = list(gpus.ids[:1])
    where = (f"{len(gpus.ids)} GPU(s) ({', '.join(gpus.ids)}, from {gpus.source})"
             if gpus.ids else "the CPU (no GPU found)")
    lines = [f"# GPU benchmark: {where}", "",
             f"Training steps only (after a warm-up), batch {batch} per device, "
             f"{args.steps} timed steps a figure; data: "
             + (f"CIFAR-10 ({args.data_dir})" if args.data_dir else "generated images"), ""]

    # 1. each network, precision and augmentation, one at a time on the first GPU
    lines += ["| network | precision | host augmentation, img/s | device augmentation, "
              "img/s |", "|---|---|---:|---:|"]
    backend = device = None
    for v in variants:
        for prec in precisions:
            if not b.fits(f"{v} {prec}", 60):
                continue
            both = b.result(b.start(v, prec, "host,device", first, batch=batch))
            got = both if "error" not in both else {"host": both, "device": both}
            backend = backend or got["device"].get("backend")
            device = device or got["device"].get("device")
            lines.append(f"| {v} | {prec} | {fmt(got['host'])} | {fmt(got['device'])} |")
            print(lines[-1], flush=True)

    # 2. K jobs packed on the first GPU
    lines += ["", f"| {one} jobs on one GPU | img/s per job | summed img/s |",
              "|---:|---|---:|"]
    for k in map(int, args.packed.split(",")):
        if not b.fits(f"{k} packed jobs", 45 + 10 * k):
            continue
        procs = [b.start(one, prec_one, "device", first, sharing=k, batch=batch)
                 for _ in range(k)]
        got = [b.result(p) for p in procs]
        ok = [r["images_per_second"] for r in got if "error" not in r]
        per = ", ".join(fmt(r) for r in got)
        lines.append(f"| {k} | {per} | {sum(ok):,.0f} |" if len(ok) == k
                     else f"| {k} | {per} | (a job failed) |")
        print(lines[-1], flush=True)

    # 3. one job across several GPUs
    if len(gpus.ids) >= 2:
        lines += ["", f"| {one}: GPUs per job | global batch | img/s | per GPU |",
                  "|---:|---:|---:|---:|"]
        spreads = (map(int, args.gpus_per_job.split(",")) if args.gpus_per_job
                   else {1, 2, len(gpus.ids)})
        for n in sorted(spreads):
            if not b.fits(f"{n} GPUs per job", 60):
                continue
            r = b.result(b.start(one, prec_one, "device", list(gpus.ids[:n]),
                                 devices_per_job=n, batch=batch * n))
            lines.append(f"| {n} | {batch * n} | {fmt(r)} | "
                         + (f"{r['images_per_second'] / n:,.0f} |" if "error" not in r
                            else "|"))
            print(lines[-1], flush=True)
    else:
        b.notes.append("one job across GPUs: not measured (fewer than 2 GPUs)")

    # 4. one epoch of ResNet-32's training steps
    images = args.epoch_images or (50_000 if args.data_dir else GENERATED_IMAGES)
    steps = math.ceil(images / batch)
    if b.fits("the timed epoch", 90):
        r = b.result(b.start(one, prec_one, "device", first, steps=steps, batch=batch))
        lines += ["", f"| one epoch of {one} ({prec_one}, device augmentation) | images | "
                  "seconds | img/s |", "|---|---:|---:|---:|"]
        seconds = "" if "error" in r else f"{steps * batch / r['images_per_second']:.1f}"
        lines.append(f"| training steps | {images:,} | {seconds} | {fmt(r)} |")
        print(lines[-1], flush=True)
    spent = time.monotonic() - b.started
    lines += ["", f"Backend {backend}, measured on the {device}; {spent:.0f} s in all."]
    lines += [f"- {n}" for n in b.notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
