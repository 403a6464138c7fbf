"""The blog's code side by side with the harness: ResNet-32 (e) at 10 epochs of the
blog's recipe on the whole of CIFAR-10, by both paths, seeds 0..N-1, alternating
(harness seed 0, blog seed 0, harness seed 1, ...), each run resumable (a finished one
is not trained again), then the paired report (ablation.report.parity).

    python benchmarks/parity.py --data-dir ../shared/data --results results/parity \\
        --out reports/parity [--seeds 3] [--epochs 10]
    python benchmarks/parity.py --results results/parity --out reports/parity --report-only

Hours on a 2-core CPU (each run about a quarter of an hour there): run it under `nice`,
in the background; it goes on where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ablation.protocol import module_command
from ablation.report import parity


def main() -> int:
    p = argparse.ArgumentParser(prog="benchmarks/parity.py")
    p.add_argument("--data-dir")
    p.add_argument("--results", default="results/parity")
    p.add_argument("--out", default="reports/parity")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--variant", default="resnet32_e")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    res = Path(a.results)
    if not a.report_only:
        if not a.data_dir:
            p.error("--data-dir is needed to train")
        for seed in range(a.seeds):
            ours = module_command("ablation.cli", "run", a.variant, "--seeds", str(seed + 1),
                                  "--epochs", str(a.epochs), "--data-dir", a.data_dir,
                                  "--results", str(res))
            theirs = module_command("ablation.baseline", "--variant", a.variant, "--epochs",
                                    str(a.epochs), "--seed", str(seed), "--data-dir",
                                    a.data_dir, "--out",
                                    str(res / parity.BASELINE / f"{a.variant}-s{seed}"))
            for cmd in (ours, theirs):
                print("$", " ".join(cmd), flush=True)
                if subprocess.run(cmd).returncode:
                    return 1
    print(f"report written to {parity.write(res, Path(a.out), a.variant)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
