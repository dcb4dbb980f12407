"""Reports of a benchmark run: the table, comparison with an earlier run, plot, README section."""
from __future__ import annotations

import math


def _si(value, unit=""):
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def format_seconds(s) -> str:
    for factor, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= factor:
            return f"{s / factor:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def _table(header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(report) -> str:
    """The human-readable table of a report (what ``nnbackends bench`` prints)."""
    header = ["suite", "work", "size", "backend", "median", "rate", "vs numpy", "vs torch",
              "GFLOP/s", "% peak", "first call", "user fit", "vs numpy", "vs torch"]
    rows = [[r["suite"], r["workload"], r["size"], r["backend"], format_seconds(r["median_s"]),
             f"{_si(r['rate'])} {r['rate_unit']}", _ratio(r["speedup_vs_numpy"]), _ratio(r["speedup_vs_torch"]),
             f"{r['gflops_per_s']:.3g}", f"{r['percent_peak']:.1f}", format_seconds(r["first_call_s"]),
             *_user_view(r)]
            for r in report["results"]]
    peak = report["peak"]
    lines = [_table(header, rows), "",
             "user fit: one fit of a new model over the first rows, shuffled, wall clock (samples/s); "
             "PyTorch: a plain loop over randperm batches",
             f"peak: {peak['gflops_per_s']:.1f} GFLOP/s float32 (fastest NumPy {peak['sgemm_n']}² matmul, same run); "
             f"dtype {report['plan']['dtype']}; {report['machine']['cpu_count']} cores, "
             f"threads {report['plan']['threads'] or 'default'}; {report['created']}"]
    lines += _products_lines(report["results"])
    lines += _peer_check_lines(report.get("torch_alone"))
    lines += [f"warm-up {key}: {format_seconds(s)}" for key, s in report["warmup_s"].items() if s > 1e-3]
    lines += [f"{name}: not available: {reason}" for name, reason in report["unavailable"].items()]
    lines += [f"{skip['work']}: skipped: {skip['reason']}" for skip in report.get("skipped", ())]
    lines += [f"{e['backend']} failed on {e['work']}: {e['error']}" for e in report["errors"]]
    return "\n".join(lines)


def _user_view(r) -> list[str]:
    if "user_fit_s" not in r:
        return ["-", "-", "-"]
    return [f"{_si(r['user_samples_per_s'])} samples/s", _ratio(r.get("user_speedup_vs_numpy")),
            _ratio(r.get("user_speedup_vs_torch"))]


def _products_lines(results) -> list[str]:
    """What the ``products alone`` rows mean, and each step's share taken by its products."""
    shares = [f"{r['workload']} {r['backend']} {r['products_share']:.2f}" for r in results
              if r.get("products_share") is not None]
    if not shares:
        return []
    return [f"products alone: the step's matrix products through NumPy and nothing else, counted at the step's "
            f"FLOPs: the ceiling of a step's % peak on this BLAS; their share of each step: {', '.join(shares)}"]


def _peer_check_lines(check) -> list[str]:
    """What the PyTorch-alone check found (see ``peer_check``)."""
    if check is None:
        return []
    if "error" in check:
        return [f"PyTorch alone: not timed ({check['error']})"]
    marks = {"agrees": "", "differs": " DIFFERS", "noisy": " (beyond 10% but within the noise)"}
    cells = [f"{c['workload']} {c['ratio']:.2f}x (95% CI {_interval(c['ratio_ci'])}){marks[c['verdict']]}"
             for c in check]
    verdicts = {c["verdict"] for c in check}
    verdict = ("all within 10%" if verdicts == {"agrees"} else "NOT all within 10%" if "differs" in verdicts
               else "not all within 10%, but no difference beyond this machine's noise: rerun when it is quieter")
    return [f"PyTorch in the suite / PyTorch alone in its own process, round for round: {', '.join(cells)}: {verdict}"]


def _interval(bounds) -> str:
    return "unknown: too few rounds" if bounds is None else f"{bounds[0]:.2f}-{bounds[1]:.2f}"


def row_key(r):
    """What identifies a row across runs (for --compare)."""
    return (r["suite"], r["workload"], r["size"], r["backend"], r["dtype"])


def compare(old, new) -> str:
    """What changed between two reports: per matching row the old and new median and the ratio."""
    before = {row_key(r): r for r in old["results"]}
    after = {row_key(r): r for r in new["results"]}
    rows = []
    for key, r in after.items():
        if key in before:
            ratio = before[key]["median_s"] / r["median_s"]
            verdict = "faster" if ratio > 1 else "slower"
            change = f"{max(ratio, 1 / ratio):.2f}x {verdict}"
            rows.append([*key[:4], format_seconds(before[key]["median_s"]), format_seconds(r["median_s"]), change])
    text = [f"compared with the run of {old.get('created', '?')}:",
            _table(["suite", "work", "size", "backend", "old median", "new median", "change"], rows)]
    text += [f"only in the old run: {' '.join(map(str, k[:4]))}" for k in before if k not in after]
    text += [f"only in this run: {' '.join(map(str, k[:4]))}" for k in after if k not in before]
    return "\n".join(text)


def plot(report, path):
    """Speed-up against the NumPy backend versus FLOPs per call, one panel per piece of work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {}
    for r in report["results"]:
        if r["speedup_vs_numpy"] is not None:
            panel = "training workloads" if r["suite"] == "train" else r["workload"]
            panels.setdefault(panel, {}).setdefault(r["backend"], []).append((r["flops"], r["speedup_vs_numpy"]))
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (panel, series) in zip(axes.flat, panels.items()):
        for backend, points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=backend)
        ax.set(title=panel, xscale="log", yscale="log", xlabel="FLOPs per call", ylabel="speed-up vs numpy")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def update_readme(path, report):
    """Replace the text between the bench-table markers of ``path`` with this run's table."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"--update-readme: {path} has no {README_START} ... {README_END} markers.")
    env = {k: v for k, v in report["machine"]["env"].items() if k.startswith("OPENBLAS_")}
    command = report["plan"]["command"]
    block = (f"{README_START}\n`{command}` on {report['created'][:10]}, {report['machine']['cpu']} "
             f"({report['machine']['cpu_count']} cores), OpenBLAS settings {env or 'none'}:\n\n"
             f"```text\n{format_table(report)}\n```\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + block + text[end:])


