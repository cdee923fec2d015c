"""Run variants.py under several environments (XLA_FLAGS, GLIBC_TUNABLES), alternating A B A B.

    .venv/bin/python bench/engine/flags.py --rounds 2 -- --layers block2_conv1 --steps 5 --reps 1

Environments are listed in ENVS; each round runs every one in its own process (flags
are read when jax initializes), so they alternate on the shared CPU.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ENVS = {
    "default": {},
    "ynn-conv": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"},
    "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "ynn-conv+hugetlb": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
                         "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}

if __name__ == "__main__":
    argv = sys.argv[1:]
    rounds, names = 1, list(ENVS)
    if "--rounds" in argv:
        i = argv.index("--rounds"); rounds = int(argv[i + 1]); del argv[i : i + 2]
    if "--envs" in argv:
        i = argv.index("--envs"); names = argv[i + 1].split(","); del argv[i : i + 2]
    if argv and argv[0] == "--":
        argv = argv[1:]
    for r in range(rounds):
        for name in names:
            env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
            env.update(ENVS[name])
            out = subprocess.run([sys.executable, os.path.join(HERE, "variants.py"), *argv], env=env,
                                 capture_output=True, text=True)
            for line in out.stdout.splitlines():
                if "s/grid" in line:
                    print(f"round {r} {name:18s} {line}", flush=True)
            if out.returncode:
                print(name, out.stderr[-2000:])
