"""Where a planned packed model's time goes: each line of its PackedRuntime plan timed
inside whole forwards (``time.perf_counter`` between lines, median over forwards); with
``--vs-model``, the runtime against the model it plans, in interleaved rounds.

    PYTHONPATH=src python benchmarks/runtime_lines.py --model mlp --batch 1
    PYTHONPATH=src python benchmarks/runtime_lines.py --model lenet5,mlp,resnet20 --vs-model

Each line's time includes what it costs in a real forward: caches cooled by the lines
before it, the array/tensor conversions the plan inserts. One thread.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from apb.bench.model_peers import build_apb, input_shape
from apb.kernels import set_num_threads


def line_times(model: str, act_bits: int, batch: int, forwards: int) -> list[tuple[str, float]]:
    """``[(line, median µs)]`` of the plan of ``model``'s benchmark build."""
    runtime, _ = build_apb(model, act_bits)
    x = torch.randn(batch, *input_shape(model), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        runtime(x)
    plan = runtime._plan
    lines = plan.source.splitlines()
    timed = [lines[0], "    _t = [_clock()]"]
    labels = []
    for line in lines[1:]:
        timed.append(line)
        body = line.strip()
        if not body.startswith(("del", "return")):
            timed.append("    _t.append(_clock())")
            labels.append(body)
    timed.insert(-1, "    _times.append(_t)")
    scope = dict(plan.scope, _clock=time.perf_counter, _times=[])
    exec("\n".join(timed), scope)  # noqa: S102  the plan's own source, instrumented
    planned = scope["planned"]
    with torch.inference_mode():
        for _ in range(forwards):
            planned(x)
    deltas = np.diff(np.array(scope["_times"][forwards // 10:]), axis=1) * 1e6
    steps = {f"f{i}": step.node.name for i, step in enumerate(plan.steps)}

    def name(label: str) -> str:  # the step a line calls, or what the line is
        match = re.match(r"v\d+ = (f\d+)\(", label)
        return steps[match.group(1)] if match else (
            "(input)" if label.endswith("x.numpy()") else "(to an array)")

    return [(f"{name(label)}: {label}", float(t))
            for label, t in zip(labels, np.median(deltas, axis=0))]


def vs_model(model: str, act_bits: int, batch: int, rounds: int) -> tuple[float, float, list]:
    """``(model ms, runtime ms, per-round ratios)``: the optimized packed model called as
    a module and through its runtime, alternating in ``rounds`` rounds of ~50 ms each."""
    runtime, _ = build_apb(model, act_bits)
    x = torch.randn(batch, *input_shape(model), generator=torch.Generator().manual_seed(0))

    def block(f, n):
        start = time.perf_counter()
        for _ in range(n):
            f(x)
        return (time.perf_counter() - start) / n * 1e3

    with torch.inference_mode():
        runtime(x)
        n = max(3, int(50 / block(runtime.model, 3)))
        times = [(block(runtime.model, n), block(runtime, n)) for _ in range(rounds)]
    return (float(np.median([a for a, _ in times])), float(np.median([b for _, b in times])),
            [a / b for a, b in times])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--act-bits", type=int, default=2, choices=[1, 2])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--forwards", type=int, default=2000)
    parser.add_argument("--vs-model", action="store_true",
                        help="time the runtime against the model instead (comma list of models)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    set_num_threads(1)
    if args.vs_model:
        for name in args.model.split(","):
            model_ms, runtime_ms, ratios = vs_model(name, args.act_bits, args.batch,
                                                    args.rounds)
            print(f"{name}: model {model_ms:.3f} ms, runtime {runtime_ms:.3f} ms, "
                  f"model/runtime {np.median(ratios):.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f})")
        return
    rows = line_times(args.model, args.act_bits, args.batch, args.forwards)
    total = sum(t for _, t in rows)
    print(f"{args.model}, batch {args.batch}, {args.act_bits}-bit activations: "
          f"{total:.1f} µs over {len(rows)} lines")
    for label, t in rows:
        print(f"{t:9.1f} µs {100 * t / total:5.1f} %  {label}")


if __name__ == "__main__":
    main()
