"""Why a job on N of JAX's CPU devices gets a client pool of cores + N threads
(`ablation.parallel.cpu_devices_env`): the first row of the table in
docs/performance.md ("One job across several GPUs") comes from this script.

    python benchmarks/host_devices.py [--seconds 60] [--pools 2,3,4]

For each pool size (`PJRT_NPROC`), a fresh process on two host devices runs a program
with an all-reduce in a loop while a second thread compiles one large function after
another, with XLA's rendezvous limit lowered to 2 s: with too small a pool, a device's
share queues behind a compilation and XLA aborts the process. Each pool's outcome is a
row: the steps run, or where it aborted. Needs JAX; runs on the CPU only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PROBE = r"""
import sys, threading, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sharded = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d"))
step = jax.jit(lambda x: x * jnp.sum(x), in_shardings=sharded, out_shardings=sharded)
x = step(jax.device_put(np.ones((2, 1000), np.float32), sharded)).block_until_ready()
done = threading.Event()


def compile_all_the_while():
    k = 0
    while not done.is_set():
        k += 1

        def large(v, k=k):
            for i in range(400):
                v = jnp.sin(v * (i + k)) @ v
            return v

        jax.jit(large).lower(jnp.ones((64, 64))).compile()


compiler = threading.Thread(target=compile_all_the_while)
compiler.start()
start, steps = time.time(), 0
while time.time() - start < float(sys.argv[1]):
    x = step(x) / 1e3
    steps += 1
x.block_until_ready()
done.set()
compiler.join()
print(steps)
"""


def probe(pool: int, seconds: float) -> str:
    """One pool size's outcome, in a process of its own (XLA reads both settings once)."""
    env = {**os.environ, "PJRT_NPROC": str(pool), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=2 "
                        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1"}
    began = time.time()
    r = subprocess.run([sys.executable, "-c", PROBE, str(seconds)], env=env,
                       capture_output=True, text=True, timeout=seconds + 600)
    if r.returncode == 0:
        return f"no wait of 2 s: {int(r.stdout.split()[-1]):,} steps in {seconds:g} s"
    if "Termination timeout" in r.stderr:
        return f"aborted after {time.time() - began:.0f} s (a share waited 2 s)"
    last = (r.stderr.strip().splitlines() or ["no message"])[-1]
    return f"failed (exit {r.returncode}): {last[:120]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pools", default="2,3,4", help="client pool sizes to try")
    args = parser.parse_args()
    import jax  # only its version: the probes start their own

    print(f"{len(os.sched_getaffinity(0))} cores, jax {jax.__version__}; about "
          f"{len(args.pools.split(','))} x {args.seconds:g} s\n")
    print("| client pool (PJRT_NPROC) | two devices, compiling all the while |")
    print("|---|---|")
    for pool in (int(p) for p in args.pools.split(",")):
        print(f"| {pool} | {probe(pool, args.seconds)} |", flush=True)


if __name__ == "__main__":
    main()
