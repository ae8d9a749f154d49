#!/usr/bin/env python3
"""Turn moex benchmark results into Markdown tables and PNG plots.

Reads bench/results/<device>/{roofline,<op>,e2e}.json (written by `moex bench ...`) and writes,
next to them:
  report.md                  ceilings, one table per op (latest record of each case per
                             implementation and commit), the end-to-end runs
  <op>_<model>.png           time and fraction of the roofline floor against tokens (fused_moe,
                             rms_norm, matmul) or KV length (attention), one line per implementation@commit
                             (and per batch for attention)

Usage: python3 tools/bench_report.py [--results bench/results] [--device SLUG] [--no-plots]
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

# The x axis of each op's plots and the field that splits attention lines by batch.
# A tuple: the first field present in a model's records (NSA forward by length, decode by batch).
X_FIELD = {"fused_moe": "tokens", "rms_norm": "tokens", "matmul": "tokens", "mla_decode": "kv_len", "gqa_decode": "kv_len",
           "nsa": ("seq_len", "batch"), "prefill_attention": "seq_len"}
# Shape fields computed by the benchmark, not chosen by the case file.
DERIVED = {"experts_hit", "slots"}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def latest_records(records):
    """Keeps the newest record of each (case, impl, commit)."""
    best = {}
    for r in records:
        key = (r.get("case"), r.get("impl"), r.get("commit"))
        if key not in best or r.get("timestamp", "") >= best[key].get("timestamp", ""):
            best[key] = r
    return list(best.values())


def series_label(r):
    label = "%s@%s" % (r.get("impl", "?"), str(r.get("commit", "?"))[:8])
    return label + (" (%s)" % r["variant"] if r.get("variant") else "")


def fmt(v, digits=2):
    return ("%%.%df" % digits) % v if isinstance(v, (int, float)) else str(v)


def op_table(op, records):
    lines = ["## %s" % op, "",
             "| case | impl@commit | median us | min us | GB/s | TFLOP/s | floor us | fraction | bound | check |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(records, key=lambda r: (r.get("model", ""), case_sort_key(r), series_label(r))):
        check = r.get("check", "")
        if "check_rel_err" in r:
            check += " (%.2e)" % r["check_rel_err"]
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r.get("case"), series_label(r), fmt(r["time_median_s"] * 1e6), fmt(r["time_min_s"] * 1e6),
            fmt(r.get("gb_per_s", 0), 1), fmt(r.get("tflop_per_s", 0), 2), fmt(r.get("floor_s", 0) * 1e6),
            fmt(r.get("fraction_of_floor", 0), 3), r.get("bound", ""), check))
    return lines + [""]


def case_sort_key(r):
    shape = r.get("shape", {})
    return tuple(shape.get(k, 0) for k in ("batch", "heads", "q_heads", "kv_len", "tokens") if isinstance(shape.get(k, 0), (int, float)))


def e2e_table(records):
    lines = ["## end to end (batch 1, greedy)", "",
             "| model | impl@commit | prompt + gen | e2e s | prefill ms | step p50 ms | step p99 ms | decode tok/s | step floor ms | fraction |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: r.get("timestamp", "")):
        lines.append("| %s | %s | %d + %d | %s | %s | %s | %s | %s | %s | %s |" % (
            os.path.basename(str(r.get("model", "")).rstrip("/")), series_label(r), r.get("prompt_tokens", 0),
            r.get("generated_tokens", 0), fmt(r.get("e2e_s", 0), 3), fmt(r.get("prefill_s", 0) * 1e3),
            fmt(r.get("decode_step_p50_s", 0) * 1e3), fmt(r.get("decode_step_p99_s", 0) * 1e3),
            fmt(r.get("decode_tokens_per_s", 0), 1), fmt(r.get("decode_step_floor_s", 0) * 1e3, 3),
            fmt(r.get("decode_step_fraction_of_floor", 0), 3)))
    lines += ["", "### decode throughput", "", "| model | impl@commit | batch | step p50 ms | tokens/s |",
              "|---|---|---:|---:|---:|"]
    for r in records:
        for t in r.get("decode_throughput", []):
            lines.append("| %s | %s | %d | %s | %s |" % (
                os.path.basename(str(r.get("model", "")).rstrip("/")), series_label(r), t["batch"],
                fmt(t["step_p50_s"] * 1e3), fmt(t["tokens_per_s"], 1)))
    return lines + [""]


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def plot_op(op, records, out_dir):
    """One PNG per model: time (log-log) and fraction of floor against the op's x field."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_fields = X_FIELD.get(op)
    if not x_fields:
        return []
    if isinstance(x_fields, str):
        x_fields = (x_fields,)
    written = []
    by_model = defaultdict(list)
    for r in records:
        by_model[r.get("model", op)].append(r)
    for model, recs in sorted(by_model.items()):
        present = [f for f in x_fields if any(f in r.get("shape", {}) for r in recs)]
        if not present:
            continue
        x_field = present[0]
        # Fields other than x that vary within the model (batch, skew...) split the lines.
        values = defaultdict(set)
        for r in recs:
            for k, v in r.get("shape", {}).items():
                values[k].add(json.dumps(v))
        split = sorted(k for k, v in values.items() if len(v) > 1 and k != x_field and k not in DERIVED)
        lines = defaultdict(list)
        for r in recs:
            shape = r.get("shape", {})
            if x_field not in shape:
                continue
            label = " ".join([series_label(r)] + ["%s=%s" % (k, shape.get(k)) for k in split])
            lines[label].append((shape[x_field], r["time_median_s"] * 1e6, r.get("fraction_of_floor", 0)))
        if not lines:
            continue
        fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(12, 4.5))
        for label, pts in sorted(lines.items()):
            pts.sort()
            xs = [p[0] for p in pts]
            ax_t.plot(xs, [p[1] for p in pts], marker="o", label=label)
            ax_f.plot(xs, [p[2] for p in pts], marker="o", label=label)
        for ax in (ax_t, ax_f):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(x_field)
            ax.grid(True, alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("median time (us)")
        ax_f.set_ylabel("fraction of roofline floor")
        top = max([1.0] + [p[2] for pts in lines.values() for p in pts])
        ax_f.set_ylim(0, top * 1.05)
        ax_f.legend(fontsize=7)
        fig.suptitle("%s %s" % (op, model))
        fig.tight_layout()
        path = os.path.join(out_dir, "%s_%s.png" % (op, slug(model)))
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report_device(device_dir, plots):
    lines = ["# moex benchmarks: %s" % os.path.basename(device_dir), ""]
    roof_path = os.path.join(device_dir, "roofline.json")
    if os.path.exists(roof_path):
        c = load_json(roof_path)
        lines += ["Ceilings (%s, measured %s at %s): copy %.3f TB/s, bf16 GEMM %.3f TFLOP/s, fp8 GEMM %.3f TFLOP/s." % (
            c.get("device"), c.get("measured_at"), str(c.get("commit"))[:8], c["copy_bytes_per_s"] / 1e12,
            c["bf16_flops_per_s"] / 1e12, c.get("fp8_flops_per_s", 0) / 1e12),
            "Floor = max(bytes / copy bandwidth, flops / bf16 rate); fraction = floor / median time.", ""]
    written = []
    for name in sorted(os.listdir(device_dir)):
        if not name.endswith(".json") or name in ("roofline.json",):
            continue
        records = load_json(os.path.join(device_dir, name))
        if not isinstance(records, list) or not records:
            continue
        op = name[:-len(".json")]
        if op == "e2e":
            lines += e2e_table(records)
            continue
        recs = latest_records(records)
        lines += op_table(op, recs)
        if plots:
            pngs = plot_op(op, recs, device_dir)
            written += pngs
            lines += ["![%s](%s)" % (os.path.basename(p), os.path.basename(p)) for p in pngs] + [""]
    out = os.path.join(device_dir, "report.md")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    return [out] + written


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="bench/results", help="results folder (default bench/results)")
    ap.add_argument("--device", help="only this device folder (its slug)")
    ap.add_argument("--no-plots", action="store_true", help="Markdown only")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.results):
        print("bench_report: %s: no such folder" % args.results, file=sys.stderr)
        return 2
    plots = not args.no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("bench_report: matplotlib is not installed (pip install matplotlib): writing tables only", file=sys.stderr)
            plots = False
    devices = [args.device] if args.device else sorted(
        d for d in os.listdir(args.results) if os.path.isdir(os.path.join(args.results, d)))
    for d in devices:
        path = os.path.join(args.results, d)
        if not os.path.isdir(path):
            print("bench_report: %s: no such device folder" % path, file=sys.stderr)
            return 2
        for out in report_device(path, plots):
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
