"""Fuzz suite: hostile and careless inputs end with one line on stderr and exit status 2, in
bounded time and memory (issue 19).

Every case of :mod:`_hostile` runs ``apb.cli.main`` in a child forked from one driver
process (so apb is imported once), with ``RLIMIT_AS`` capped at the driver's address space
plus :data:`HEADROOM`, and killed after :data:`TIME_LIMIT` seconds. The driver measures each
child's peak resident memory (``wait4``) above its own. A refusal must come from apb's
checks, not from the allocator: "out of memory" fails the test too.

``APB_FUZZ_LARGE=1`` adds 200 random header edits (the CI run has 12).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import apb
from _hostile import (
    bases,
    checkpoint_cases,
    data_cases,
    output_cases,
    packed_cases,
    random_header_cases,
    xor_cases,
)

TIME_LIMIT = 10.0
"""Seconds a case may run."""
HEADROOM = 768 << 20
"""Address space a case may add to the driver's (RLIMIT_AS)."""
PEAK_LIMIT = 500 << 20
"""Resident memory a case may add to the driver's."""
LARGE = os.environ.get("APB_FUZZ_LARGE") == "1"

DRIVER = textwrap.dedent("""
    import io, json, os, resource, signal, sys, time, traceback
    import torch
    import apb.cli
    torch.set_num_threads(1)
    cases = json.load(open(sys.argv[1]))
    time_limit, headroom = float(sys.argv[2]), int(sys.argv[3])
    results = {}
    for name, argv in cases.items():
        err_path = sys.argv[4] + ".err"
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            status = open("/proc/self/status").read()
            size = int(status.split("VmSize:")[1].split()[0]) * 1024
            with open(err_path + ".rss", "w") as f:
                f.write(status.split("VmRSS:")[1].split()[0])
            resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
            try:
                rc = apb.cli.main(argv)
            except SystemExit as exit:
                rc = exit.code if isinstance(exit.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 99
            sys.stderr.flush()
            os._exit(rc if isinstance(rc, int) else 98)
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - start > time_limit:
                os.kill(pid, signal.SIGKILL)
                done, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.01)
        rc = os.waitstatus_to_exitcode(status)
        results[name] = {"rc": rc, "seconds": time.perf_counter() - start,
                         "peak": (usage.ru_maxrss - int(open(err_path + ".rss").read())) * 1024,
                         "stderr": open(err_path).read()}
    json.dump(results, open(sys.argv[4], "w"))
""")


def run_cases(cases: dict[str, list[str]], tmp_path: Path) -> dict[str, dict]:
    spec, out = tmp_path / "cases.json", tmp_path / "results.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(apb.__file__).parent.parent), str(Path(__file__).parent)]),
        "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    env.pop("APB_MAX_LOAD_BYTES", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(TIME_LIMIT),
                           str(HEADROOM), str(out)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60 + 2 * TIME_LIMIT * len(cases))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[dict[str, list[str]], Path]:
    d = tmp_path_factory.mktemp("hostile")
    base = bases(d / "base")
    cases = {}
    for make in (packed_cases, xor_cases, data_cases, output_cases):
        cases.update(make(base, d))
    cases.update(checkpoint_cases(d))
    cases.update(random_header_cases(base, d, 200 if LARGE else 12, seed=19))
    return cases, d


@pytest.fixture(scope="module")
def results(hostile, tmp_path_factory) -> dict[str, dict]:
    return run_cases(hostile[0], tmp_path_factory.mktemp("driver"))


def test_every_hostile_input_ends_in_one_line_exit_2_fast_and_small(hostile, results):
    cases, d = hostile
    problems = []
    for name, r in results.items():
        lines = r["stderr"].strip().splitlines()
        command = cases[name][0]
        random_case = name.startswith("random header")
        ok_exit = r["rc"] == 2 or (random_case and r["rc"] == 0)
        clean = (r["rc"] == 0 and not lines) or (
            len(lines) == 1 and lines[0].startswith(f"apb {command}: error: "))
        if random_case and r["rc"] == 0:  # a random edit may leave a valid model
            clean = all(line.startswith(f"apb {command}: warning") for line in lines)
        if not (ok_exit and clean):
            problems.append(f"{name}: exit {r['rc']}: {r['stderr'][-600:]!r}")
        elif "out of memory" in r["stderr"]:
            problems.append(f"{name}: refused by the allocator, not by a check: {lines[0]}")
        elif r["seconds"] > TIME_LIMIT or r["peak"] > PEAK_LIMIT:
            problems.append(f"{name}: {r['seconds']:.1f} s, {r['peak'] >> 20} MiB peak")
    print("\n".join(f"{r['seconds']:6.2f} s {r['peak'] >> 20:5d} MiB  {name}"
                    for name, r in results.items()))
    assert not problems, "\n".join(problems)
    assert not (d / "out.safetensors").exists()
    assert not (d / "run").exists() and not (d / "demo").exists()


EXPECTED = {
    "packed: nnz=0 layer, K=2^24": "would need about",
    "packed: nnz=0 layer, K=3e6": "would need about",
    "packed: mlp(hidden=[1]*100000)": "bytes of JSON",
    "packed: num_classes=4e9": "larger than",
    "packed: 20 MB header": "bytes of JSON",
    "packed: header length 2^40": "truncated|neither an apb packed model",
    "packed: 20000 layer entries": "would need about|has no place in the model",
    "packed: negative running_var": "negative variance",
    "packed: alpha < 0": "alpha holds",
    "packed: non-ASCII format_version": "ASCII",
    "packed: bnn method with a CSR part": "binary",
    "packed: unsigned edit": "sha256",
    "xor: embedded K=2^24": "would need about",
    "xor: embedded rows=1e5": "would need about",
    "xor: unsigned act_bits edit": "sha256",
    "checkpoint: width 4e6": "model_state holds only",
    "checkpoint: hidden=[1]*100000": "bytes of JSON",
    "checkpoint: zip bomb": "would need about",
    "checkpoint: legacy pickle": "zip archive",
    "cifar: label 2^70": "labels must lie in",
    "cifar: batches.meta not UTF-8": "batches.meta",
    "imagefolder: symlink out of data_dir": "outside the data directory",
    "value: --bits-per-weight nan": "finite",
    "value: --bits-per-weight inf": "finite",
    "value: demo --apb-bits-per-weight nan": "finite",
}


def test_each_refusal_says_what_was_wrong(hostile, results):
    """The one line names the problem (and, for outputs, the path that cannot be written)."""
    cases, _ = hostile
    for name in cases:
        if name in EXPECTED or name.startswith("output:"):
            line = results[name]["stderr"].strip()
            wants = EXPECTED.get(name, "a-file").split("|")
            assert any(w in line for w in wants), f"{name}: {line!r}"
