"""Causal vs bidirectional backbone at equal budget: validation noise MSE per cluster type.

Summarises two training sweeps of the same clusters (the README's CPU preset, one with
model.direction=causal, one with model.direction=bidirectional): best validation noise MSE,
the i.i.d.-Gaussian reference, and the relative gap, mean per cluster type.

    python train.py experiment=cpu_all_clusters model.direction=causal
    python train.py experiment=cpu_all_clusters model.direction=bidirectional
    python benchmarks/direction_quality.py            # the newest sweep of each direction
    python benchmarks/direction_quality.py --causal DIR --bidirectional DIR
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def newest(direction: str, root: Path) -> Path:
    for sweep in sorted(root.glob("*"), reverse=True):
        rows = load(sweep)
        if rows and all(r.get("direction") == direction for r in rows) and len(rows) > 1:
            return sweep
    print(f"no {direction} sweep under {root}: run train.py as in the docstring first")
    raise SystemExit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--causal", type=Path)
    ap.add_argument("--bidirectional", type=Path)
    ap.add_argument("--root", type=Path, default=Path("outputs/train_multirun"))
    args = ap.parse_args()
    sweeps = {
        "causal": args.causal or newest("causal", args.root),
        "bidirectional": args.bidirectional or newest("bidirectional", args.root),
    }
    table: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    print("| cluster | type | causal (vs iid) | bidirectional (vs iid) |\n|---|---|---|---|")
    rows = {d: {r["cluster_id"]: r for r in load(s)} for d, s in sweeps.items()}
    for cid in sorted(rows["causal"]):
        cells = []
        for d in sweeps:
            r = rows[d].get(cid)
            if r is None:
                cells.append("-")
                continue
            best, ref = r["best_val_noise_mse"], r["val_noise_mse_iid_baseline"]
            table[r["type"]][d].append((best, ref))
            cells.append(f"{best:.4f} ({100 * (best / ref - 1):+.0f}%)")
        print(f"| c{cid} | {rows['causal'][cid]['type']} | {cells[0]} | {cells[1]} |")
    print("\nmean per cluster type (best val noise MSE, % vs the i.i.d. reference)")
    print("| type | causal | bidirectional | causal / bidirectional |\n|---|---|---|---|")
    for typ, per in sorted(table.items()):
        m = {d: sum(b for b, _ in v) / len(v) for d, v in per.items()}
        rel = {d: 100 * sum(b / r - 1 for b, r in v) / len(v) for d, v in per.items()}
        print(
            f"| {typ} | {m['causal']:.4f} ({rel['causal']:+.0f}%) | "
            f"{m['bidirectional']:.4f} ({rel['bidirectional']:+.0f}%) | "
            f"{m['causal'] / m['bidirectional']:.2f} |"
        )
    for d, s in sweeps.items():
        print(f"{d}: {s}")


if __name__ == "__main__":
    main()
