"""The comparison's table (markdown) and picture (accuracy against model bytes, Pareto front)."""

from __future__ import annotations

from ..io import write_figure

KEEP_MARKER = "<!-- written by hand below this line: apb compare keeps it when it rewrites the page -->"


def pareto_front(results: list[dict]) -> list[str]:
    """Methods no other method beats on both axes: at most the bytes *and* at least the mean
    accuracy, one of them strictly. Returned from smallest to largest."""
    front = []
    for r in results:
        dominated = any(
            o is not r and o["model_bytes"] <= r["model_bytes"]
            and o["test_acc_mean"] >= r["test_acc_mean"]
            and (o["model_bytes"] < r["model_bytes"] or o["test_acc_mean"] > r["test_acc_mean"])
            for o in results
        )
        if not dominated:
            front.append(r)
    return [r["method"] for r in sorted(front, key=lambda r: r["model_bytes"])]


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def model_name(report: dict) -> str:
    """The model as the report names it: ``mlp`` or, with builder options,
    ``mlp (hidden=[64, 64, 64])``."""
    options = report.get("model_options") or {}
    if not options:
        return report["model"]
    return f"{report['model']} ({', '.join(f'{k}={v}' for k, v in options.items())})"


def markdown_table(report: dict) -> str:
    """One row per method, Pareto-optimal ones marked with ★."""
    front = set(pareto_front(report["results"]))
    lines = [
        f"{model_name(report)} on {report['dataset']}, mean ± std over {report['seeds']} "
        f"seed(s), {report['epochs']} epochs, compressed-layer activations: "
        f"{ {32: 'full precision', 2: '2-bit', 1: '1-bit'}[report['act_bits']] }.",
        "",
        "| method | test acc (%) | bits/weight | model bytes | latency b1 (ms) "
        "| latency b64 (ms) | runs on |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["results"], key=lambda r: r["model_bytes"]):
        star = " ★" if r["method"] in front else ""
        lines.append(
            f"| {r['method']}{star} | {100 * r['test_acc_mean']:.2f} ± "
            f"{100 * r['test_acc_std']:.2f} | {r['bits_per_weight']:.3f} | "
            f"{r['model_bytes']:,} | {_ms(r['latency_ms_b1'])} | {_ms(r['latency_ms_b64'])} | "
            f"{r['runs_on'] or 'n/a'} |"
        )
    lines += ["", "★: on the Pareto front (no other method is both smaller and more accurate). "
              "bits/weight is over the compressed layers; model bytes is the whole model. "
              "`packed`: bitwise kernels; `torch_fp32`: the method has no packed form and "
              "runs as a dense PyTorch model."]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def dominance(report: dict) -> list[str]:
    """For every non-APB method, which APB points beat it on both axes (at most its bytes,
    at least its mean accuracy), or else the APB point closest in size and the gap. One
    sentence per method, from the numbers alone."""
    rows = report["results"]
    apb = [r for r in rows if r["method"].startswith("apb")]
    if not apb:
        return []
    lines = []
    for b in rows:
        if b["method"].startswith("apb"):
            continue
        beats = [a for a in apb if a["model_bytes"] <= b["model_bytes"]
                 and a["test_acc_mean"] >= b["test_acc_mean"]]
        if beats:
            names = ", ".join(
                f"{a['method']} ({a['model_bytes']:,} B, {_pct(a['test_acc_mean'])} %)"
                for a in sorted(beats, key=lambda a: a["model_bytes"]))
            lines.append(f"- **{b['method']}** ({b['model_bytes']:,} B, "
                         f"{_pct(b['test_acc_mean'])} ± {_pct(b['test_acc_std'])} %): "
                         f"dominated by {names}.")
            continue
        near = min(apb, key=lambda a: abs(a["model_bytes"] - b["model_bytes"]))
        gap = near["test_acc_mean"] - b["test_acc_mean"]
        noise = max(near["test_acc_std"], b["test_acc_std"])
        verdict = "within one std" if abs(gap) <= noise else ("ahead" if gap > 0 else "behind")
        lines.append(
            f"- **{b['method']}** ({b['model_bytes']:,} B, {_pct(b['test_acc_mean'])} ± "
            f"{_pct(b['test_acc_std'])} %): not dominated; the APB point nearest in size, "
            f"{near['method']} ({near['model_bytes']:,} B, {near['model_bytes'] / b['model_bytes']:.2f}x "
            f"its bytes), is {abs(100 * gap):.2f} points {'above' if gap >= 0 else 'below'} "
            f"({verdict}).")
    return lines


def report_markdown(report: dict, plot: str | None = None) -> str:
    """The whole result as markdown: the command, the machine, the table, the plot (its path
    as given, relative to the markdown file) and the dominance sentences."""
    env = report.get("environment", {})
    parts = [f"# Results: {model_name(report)} on {report['dataset']}", "",
             "Written by `apb compare` with the command below: every method trained "
             "or compressed on one harness, the same epochs for every trained method, "
             "post-training methods applied to the `fp` model of the same seed.", ""]
    if report.get("command"):
        parts += ["```bash", report["command"], "```", ""]
    if env:
        parts += [", ".join(f"{k}: {v}" for k, v in env.items()) +
                  f"; {report['seconds'] / 60:.1f} minutes in all.", ""]
    parts += [markdown_table(report), ""]
    if plot:
        parts += [f"![accuracy against model bytes]({plot})", ""]
    lines = dominance(report)
    if lines:
        parts += ["Against APB, method by method (mean accuracy; bytes of the whole model):",
                  "", *lines, ""]
    return "\n".join(parts)


def keep_hand_written(page: str, old: str | None) -> str:
    """``page`` followed by the part of the previous page ``old`` from :data:`KEEP_MARKER`
    on (verdicts, links to related pages), so that regenerating a page keeps them."""
    if not old or KEEP_MARKER not in old:
        return page
    return page.rstrip("\n") + "\n\n" + old[old.index(KEEP_MARKER):]


def plot_pareto(report: dict, path: str) -> None:
    """Test accuracy (mean ± std) against model bytes (log scale), the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    front = pareto_front(results)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    # Alternate label offsets by size order, so that neighbours' labels do not overlap.
    for i, r in enumerate(sorted(results, key=lambda r: r["model_bytes"])):
        apb_like = r["method"].startswith("apb")
        ax.errorbar(r["model_bytes"], 100 * r["test_acc_mean"], yerr=100 * r["test_acc_std"],
                    fmt="o" if apb_like else "s", color="C3" if apb_like else "C0",
                    capsize=3, markersize=6)
        ax.annotate(r["method"], (r["model_bytes"], 100 * r["test_acc_mean"]),
                    textcoords="offset points", xytext=(5, 5 if i % 2 else -11), fontsize=8)
    by_name = {r["method"]: r for r in results}
    ax.plot([by_name[m]["model_bytes"] for m in front],
            [100 * by_name[m]["test_acc_mean"] for m in front],
            "--", color="grey", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("model bytes (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model_name(report)} on {report['dataset']}: accuracy against size "
                 f"({report['seeds']} seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    write_figure(fig, path)
