"""Reading finished runs back from their run dirs, and ranking them: leaderboard.csv (one row per
finished run), leaderboard_by_config.csv (mean, std, min and max over seeds), leaderboard.md (both
tables, the published rows for the dataset and size, the plot) and auc_vs_time.png.

All reported numbers come from the run's ``eval/metrics.json`` (chest_tf.evaluation.metrics on the
best validation-AUC checkpoint): AUC/ACC by the MedMNIST formulas, test AUC/ACC 95% CIs by
bootstrap over test images, sensitivity/specificity as the mean over labels at thresholds chosen on
validation. Configs are ranked by mean validation AUC; test numbers are reported, never used to
choose.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chest_tf.errors import ChestTFError
from chest_tf.evaluation.benchmarks import published_rows
from chest_tf.evaluation.plots import DPI
from chest_tf.experiments.plan import PlannedRun, Sweep, label_value, run_dir_of
from chest_tf.files import write_text_atomic
from chest_tf.locks import RUN_LOCK
from chest_tf.locks import holder as lock_holder
from chest_tf.models.registry import arch_family
from chest_tf.runs import FINISHED_MARKER, load_keras_model

# ----------------------------------------------------------------------------------------------
# One run dir -> one row


def run_state(run_dir: Path) -> str:
    """"finished", "running" (another process holds the run dir's lock), "interrupted" (a
    config.json but no finished.json) or "new"."""
    if (run_dir / FINISHED_MARKER).exists():
        return "finished"
    if lock_holder(run_dir / RUN_LOCK) is not None:
        return "running"
    if (run_dir / "config.json").exists():
        return "interrupted"
    return "new"


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict:
    """The file's JSON, or {} while the run has not written it (or wrote it only in part)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _ci(values: Any, index: int) -> float | None:
    if isinstance(values, (list, tuple)) and len(values) == 2 and is_finite(values[index]):
        return float(values[index])
    return None


def arch_facts(arch: str, overrides: dict[str, Any]) -> dict[str, str]:
    """family, depth (18, 121, tiny, ...) and a short variant text from the model overrides."""
    try:
        family = arch_family(arch)
    except ValueError:  # a run dir of an architecture no longer registered
        family = ""
    depth = arch[len(family):].lstrip("_") if family and arch.startswith(family) else arch
    words = {"width": "width", "growth_rate": "growth", "compression": "compression", "head_dropout": "dropout",
             "drop_path_rate": "drop-path", "patch_size": "patch", "depth": "depth", "dim": "dim",
             "stem": "stem", "heads": "heads"}
    variant = ", ".join(f"{words.get(k, k)} {label_value(v)}" for k, v in sorted(overrides.items()))
    return {"family": family, "depth": depth, "variant": variant or "standard"}


def _history_epochs(path: Path) -> int | None:
    try:
        with open(path, newline="") as stream:
            return sum(1 for _ in csv.DictReader(stream))
    except OSError:
        return None


def read_run(run_dir: Path) -> dict[str, Any]:
    """One leaderboard row from a run dir (empty values where the run has not produced them)."""
    saved = _read_json(run_dir / "config.json")
    config = saved.get("config", {})
    model = config.get("model", {})
    result = _read_json(run_dir / "eval" / "metrics.json")
    timing = _read_json(run_dir / "timing.json")
    best = _read_json(run_dir / "best.json")
    val, test = result.get("val", {}), result.get("test", {})
    head = result.get("headline", {})
    val_means, test_means = val.get("mean_over_defined", {}), test.get("mean_over_defined", {})
    return {
        "status": run_state(run_dir),
        "dataset": config.get("data", {}).get("dataset"),
        "size": config.get("data", {}).get("size"),
        "arch": model.get("arch"),
        **arch_facts(model.get("arch") or "", model.get("overrides") or {}),
        "seed": config.get("train", {}).get("seed"),
        "epochs": _history_epochs(run_dir / "history.csv"),
        "best_epoch": best.get("epoch"),
        "s_per_epoch": timing.get("seconds_per_epoch"),
        "total_s": timing.get("total_seconds"),
        "images_per_s": timing.get("train_images_per_second"),
        "val_auc": val.get("auc"),
        "val_acc": val.get("acc"),
        "test_auc": head.get("auc", test.get("auc")),
        "test_auc_lo": _ci(head.get("auc_ci"), 0),
        "test_auc_hi": _ci(head.get("auc_ci"), 1),
        "test_acc": head.get("acc", test.get("acc")),
        "test_acc_lo": _ci(head.get("acc_ci"), 0),
        "test_acc_hi": _ci(head.get("acc_ci"), 1),
        "sensitivity": test_means.get("sensitivity"),
        "specificity": test_means.get("specificity"),
        "val_sensitivity": val_means.get("sensitivity"),
        "val_specificity": val_means.get("specificity"),
        "threshold_method": (result.get("thresholds") or {}).get("method"),
        "val_auc_keras": best.get("val_auc"),
        "device": (saved.get("runtime") or {}).get("device"),
    }


_PARAMS_CACHE: dict[str, int | None] = {}


def count_params(run_dir: Path) -> int | None:
    """Parameters of the run's best.keras (loaded once per architecture setting)."""
    saved = _read_json(run_dir / "config.json").get("config", {})
    key = json.dumps([saved.get("data", {}).get("dataset"), saved.get("data", {}).get("size"), saved.get("model")],
                     sort_keys=True)
    if key in _PARAMS_CACHE:
        return _PARAMS_CACHE[key]
    path = run_dir / "best.keras"
    if not path.exists():
        return None
    try:
        model = load_keras_model(path)
    except ChestTFError as exc:  # a broken file should not cost the leaderboard
        print(f"warning: no parameter count for {run_dir.name} ({exc})", file=sys.stderr)
        return None
    _PARAMS_CACHE[key] = int(model.count_params())
    return _PARAMS_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Rows of a sweep, and their aggregation per config


RUN_COLUMNS = (
    "run", "config", "seed", "status", "dataset", "size", "arch", "family", "depth", "variant", "params", "epochs",
    "best_epoch", "s_per_epoch", "total_s", "images_per_s", "val_auc", "val_acc", "test_auc", "test_auc_lo",
    "test_auc_hi", "test_acc", "test_acc_lo", "test_acc_hi", "sensitivity", "specificity", "val_sensitivity",
    "val_specificity", "threshold_method", "val_auc_keras", "device", "run_dir",
)
AGGREGATED = ("val_auc", "test_auc", "test_acc", "sensitivity", "specificity", "s_per_epoch", "total_s")
CONFIG_COLUMNS = (
    "rank", "config", "dataset", "size", "arch", "family", "depth", "variant", "params", "n_seeds", "seeds",
    *(f"{m}_{stat}" for m in AGGREGATED for stat in ("mean", "std", "min", "max")),
)


def _stats(values: list[float]) -> dict[str, float | None]:
    values = [float(v) for v in values if is_finite(v)]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def collect_rows(runs: list[PlannedRun], sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per planned run, from its run dir under ``sweep_dir`` (described from the plan
    while it has not started)."""
    rows = []
    for run in runs:
        run_dir = run_dir_of(sweep_dir, run)
        row = {"run": run.name, "config": run.config_name, "run_dir": str(run_dir), **read_run(run_dir)}
        if row["arch"] is None:  # not started: describe it from the plan
            facts = arch_facts(run.config.model.arch, run.config.model.overrides)
            row.update(arch=run.config.model.arch, seed=run.seed, dataset=run.config.data.dataset,
                       size=run.config.data.size, **facts)
        row["params"] = count_params(run_dir) if row["status"] == "finished" else None
        rows.append(row)
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config (over its finished seeds): mean, std (n-1), min and max; ranked by mean val AUC."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "finished" and is_finite(row.get("val_auc")):
            groups.setdefault(row["config"], []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        agg = {k: first.get(k) for k in ("config", "dataset", "size", "arch", "family", "depth", "variant", "params")}
        agg["n_seeds"] = len(members)
        agg["seeds"] = " ".join(str(m["seed"]) for m in members)
        for metric in AGGREGATED:
            for stat, value in _stats([m.get(metric) for m in members]).items():
                agg[f"{metric}_{stat}"] = value
        out.append(agg)
    out.sort(key=lambda a: -(a["val_auc_mean"] if is_finite(a["val_auc_mean"]) else -math.inf))
    for rank, agg in enumerate(out, 1):
        agg["rank"] = rank
    return out


def published_for(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """benchmarks.published_rows for every (dataset, size) the runs cover."""
    pairs = sorted({(r["dataset"], int(r["size"])) for r in rows if r.get("dataset") and r.get("size")})
    return {pair: published_rows(*pair) for pair in pairs}


# ----------------------------------------------------------------------------------------------
# Tables: CSV, markdown, terminal


def write_csv(path: Path, columns: Iterable[str], rows: list[dict]) -> None:
    """``rows`` under ``columns`` (other keys left out, None as empty), replacing ``path`` atomically."""
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(path, stream.getvalue())


def format_number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_finite(value) else "–"


def format_duration(seconds: Any) -> str:
    """``12.3 s``, ``4m 05s`` or ``2h 03m``; ``–`` for no number."""
    if not is_finite(seconds):
        return "–"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _params(value: Any) -> str:
    if not is_finite(value):
        return "–"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value / 1e3:.1f} k"


def _spread(agg: dict, metric: str, digits: int = 3) -> str:
    mean = agg.get(f"{metric}_mean")
    if not is_finite(mean):
        return "–"
    if agg["n_seeds"] < 2:
        return format_number(mean, digits)
    return (f"{format_number(mean, digits)} ± {format_number(agg[f'{metric}_std'], digits)} "
            f"[{format_number(agg[f'{metric}_min'], digits)}–{format_number(agg[f'{metric}_max'], digits)}]")


def _with_ci(value: Any, lo: Any, hi: Any) -> str:
    if not is_finite(value):
        return "–"
    if is_finite(lo) and is_finite(hi):
        return f"{format_number(value)} ({format_number(lo)}–{format_number(hi)})"
    return format_number(value)


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def render_markdown(sweep: Sweep, rows: list[dict], configs: list[dict], published: dict, plot_name: str | None,
                    failures: dict[str, str] | None = None) -> str:
    finished = [r for r in rows if r["status"] == "finished"]
    lines = [f"# Sweep `{sweep.name}`: leaderboard", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    pairs = ", ".join(f"{d} {s} px" for d, s in published) or "–"
    devices = sorted({r["device"] for r in finished if r.get("device")})
    lines += [f"{len(finished)} of {len(rows)} planned runs finished ({pairs}; device: {', '.join(devices) or '–'}). "
              f"Source: `{sweep.source or '-'}`; rebuilt from the run dirs at {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    missing = [f"`{r['run']}` ({r['status']})" for r in rows if r["status"] != "finished"]
    if missing:
        lines += ["Not finished: " + ", ".join(missing) + ".", ""]
    if failures:
        lines += ["Failed in the last invocation: " + "; ".join(f"`{k}`: {v}" for k, v in failures.items()), ""]
    lines += [
        "AUC and ACC by the MedMNIST formulas (chest_tf.evaluation.metrics) on the checkpoint with the best "
        "validation AUC; test 95% CIs: percentile bootstrap over test images; sensitivity and specificity: test "
        "means over labels at thresholds chosen on validation. Ranked by mean validation AUC (test is reported, "
        "never used to choose). Per config: mean ± std [min–max] over seeds (times: mean).", "",
        "## By config", "",
    ]
    body = [[str(a["rank"]), f"`{a['config']}`", a["arch"] or "", a["family"] or "", f"{a['depth']} ({a['variant']})",
             _params(a["params"]), str(a["n_seeds"]), format_duration(a["s_per_epoch_mean"]),
             format_duration(a["total_s_mean"]), _spread(a, "val_auc"), _spread(a, "test_auc"),
             _spread(a, "test_acc"), _spread(a, "sensitivity"), _spread(a, "specificity")]
            for a in configs]
    lines += markdown_table(["rank", "config", "arch", "family", "depth/variant", "params", "seeds", "s/epoch",
                             "total time", "val AUC", "test AUC", "test ACC", "sensitivity", "specificity"], body)
    lines += ["", "## All runs", ""]
    body = [[f"`{r['run']}`", r["arch"] or "", r["family"] or "", f"{r['depth']} ({r['variant']})",
             _params(r["params"]), str(r["epochs"] if r["epochs"] is not None else "–"),
             str(r["best_epoch"] if r["best_epoch"] is not None else "–"), format_duration(r["s_per_epoch"]),
             format_duration(r["total_s"]), format_number(r["val_auc"]),
             _with_ci(r["test_auc"], r["test_auc_lo"], r["test_auc_hi"]),
             _with_ci(r["test_acc"], r["test_acc_lo"], r["test_acc_hi"]), format_number(r["sensitivity"]),
             format_number(r["specificity"])]
            for r in finished]
    lines += markdown_table(["run", "arch", "family", "depth/variant", "params", "epochs", "best epoch", "s/epoch",
                             "total time", "val AUC", "test AUC (95% CI)", "test ACC (95% CI)", "sensitivity",
                             "specificity"], body)
    for (dataset, size), published_list in published.items():
        lines += ["", f"## Published results: {dataset} {size} px", ""]
        if not published_list:
            lines += [f"No published results for {dataset} at {size} px (chest_tf.evaluation.benchmarks)."]
            continue
        body = [[p["method"], format_number(p["auc"]), format_number(p["acc"]), p["group"], p["note"]]
                for p in published_list]
        lines += markdown_table(["method", "test AUC", "test ACC", "source", "note"], body)
        lines += ["", "Published test numbers (../shared/reference/benchmarks.md); training recipes differ "
                  "(see the notes), so compare with care."]
    if plot_name:
        lines += ["", "## Test AUC against training time", "", f"![test AUC against training time]({plot_name})"]
    return "\n".join(lines) + "\n"


def _mean_std(agg: dict, metric: str) -> str:
    mean, std = agg[f"{metric}_mean"], agg[f"{metric}_std"]
    return f"{format_number(mean)} ± {format_number(std)}" if agg["n_seeds"] > 1 else format_number(mean)


def leaderboard_summary(configs: list[dict]) -> str:
    """A few lines for the terminal."""
    if not configs:
        return "no finished runs yet"
    lines = [f"{'rank':>4}  {'config':<28} {'seeds':>5}  {'val AUC':>15}  {'test AUC':>15}  {'test ACC':>15}  "
             f"{'s/epoch':>8}"]
    for a in configs:
        lines.append(f"{a['rank']:>4}  {a['config'][:28]:<28} {a['n_seeds']:>5}  {_mean_std(a, 'val_auc'):>15}  "
                     f"{_mean_std(a, 'test_auc'):>15}  {_mean_std(a, 'test_acc'):>15}  "
                     f"{format_number(a['s_per_epoch_mean'], 1):>8}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The plot, and everything written together


FAMILY_COLOURS = {"resnet": "C0", "densenet": "C1", "vit": "C2"}  # other families: grey (C7)


def plot_auc_vs_time(rows: list[dict], configs: list[dict], published: dict, out_path: Path, title: str) -> Path | None:
    """Test AUC against total training time: each run faint, each config's mean with std bars,
    published results as horizontal lines (they come without training times)."""
    finished = [r for r in rows
                if r["status"] == "finished" and is_finite(r.get("test_auc")) and is_finite(r.get("total_s"))]
    if not finished:
        return None
    fig = Figure(figsize=(8.5, 5.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in finished:
        ax.plot(row["total_s"], row["test_auc"], "o", ms=4, alpha=0.35, color=FAMILY_COLOURS.get(row["family"], "C7"))
    seen_families = set()
    for agg in configs:
        if not (is_finite(agg["test_auc_mean"]) and is_finite(agg["total_s_mean"])):
            continue
        colour = FAMILY_COLOURS.get(agg["family"], "C7")
        label = agg["family"] if agg["family"] not in seen_families else None
        seen_families.add(agg["family"])
        ax.errorbar(agg["total_s_mean"], agg["test_auc_mean"], xerr=agg["total_s_std"] or None,
                    yerr=agg["test_auc_std"] or None, fmt="s", ms=6, color=colour, capsize=3, label=label)
        ax.annotate(agg["config"], (agg["total_s_mean"], agg["test_auc_mean"]), xytext=(5, 4),
                    textcoords="offset points", fontsize=8)
    times = [r["total_s"] for r in finished]
    if min(times) > 0 and max(times) / min(times) > 20:
        ax.set_xscale("log")
    several = len(published) > 1
    lines = sorted(((pub["auc"], pub, dataset, size) for (dataset, size), published_list in published.items()
                    for pub in published_list if is_finite(pub.get("auc"))), key=lambda item: item[0])
    aucs = [r["test_auc"] for r in finished] + [auc for auc, *_ in lines]
    low, high = min(aucs), max(aucs)
    pad = max(0.01, 0.08 * (high - low))
    last_label = {1.0: -math.inf, 0.0: -math.inf}  # the y of the last label on the right / left edge
    for auc, pub, dataset, size in lines:
        ax.axhline(auc, color="0.55", lw=0.9, ls=":" if pub.get("ceiling") else "--", zorder=0)
        text = f"{pub['method']}" + (f" [{dataset} {size}]" if several else "")
        # Labels of lines closer than ~2% of the axis alternate between the right and left edge.
        side = 1.0 if auc - last_label[1.0] > 0.02 * (high - low + 2 * pad) else 0.0
        last_label[side] = auc
        ax.annotate(text, (side, auc), xycoords=("axes fraction", "data"), xytext=(-3 if side else 3, 2),
                    textcoords="offset points", ha="right" if side else "left", fontsize=6.5, color="0.4")
    ax.set_ylim(low - pad, min(1.0, high + pad) if high < 1 else 1.002)
    ax.set_xlabel("total training time (s)")
    ax.set_ylabel("test AUC (MedMNIST formula)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, title="square: config mean ± std; dot: a seed", title_fontsize=7)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    fig.clear()
    return out_path


def write_leaderboard(sweep: Sweep, sweep_dir: Path, failures: dict[str, str] | None = None) -> dict[str, Any]:
    """Rebuild leaderboard.csv, leaderboard_by_config.csv, leaderboard.md and auc_vs_time.png from
    the run dirs of every planned run."""
    rows = collect_rows(sweep.runs, sweep_dir)
    finished = [r for r in rows if r["status"] == "finished"]
    configs = aggregate(rows)
    published = published_for(rows)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_csv(sweep_dir / "leaderboard.csv", RUN_COLUMNS, finished)
    write_csv(sweep_dir / "leaderboard_by_config.csv", CONFIG_COLUMNS, configs)
    plot = plot_auc_vs_time(rows, configs, published, sweep_dir / "auc_vs_time.png",
                            f"{sweep.name}: test AUC against training time")
    if plot is None and (sweep_dir / "auc_vs_time.png").exists():
        (sweep_dir / "auc_vs_time.png").unlink()
    markdown = render_markdown(sweep, rows, configs, published, plot.name if plot else None, failures)
    write_text_atomic(sweep_dir / "leaderboard.md", markdown)
    return {"rows": rows, "configs": configs, "published": published, "markdown": markdown}
