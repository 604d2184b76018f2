"""A real weekly panel, not made by this project, to try the four stages on.

Sources: statsmodels' bundled datasets (no download)
- ``co2``: weekly atmospheric CO2 at Mauna Loa (ppm), 1958-03-29 .. 2001-12-29, W-SAT,
  2,284 weeks with 59 missing weeks. Kept as observed: the gaps stay NaN (the project
  masks interior gaps), nothing is filled.
- ``macrodata``: quarterly US macro series 1959Q1 .. 2009Q3 (final revised values, not
  real-time vintages).

Alignment onto the co2 weekly calendar is causal: a quarter's value is taken as published
``PUBLICATION_LAG`` after the quarter ends and is then held until the next one is
published (``merge_asof`` backward). Weeks before the first publication are NaN; nothing is
back-filled.

Columns
- ``date_id``: 0, 1, ... (week ``date_id`` is 1958-03-29 + 7 * date_id days).
- ``co2`` and ``dlog_co2`` (weekly log-change x 100, mean-reverting).
- macro levels held weekly: realgdp realcons realinv cpi m1 tbilrate unemp infl realint
  (1959Q1's infl and realint are 0.00 placeholders in the dataset: set to NaN).
- ``g_<x>``: quarter-on-quarter log growth x 100 of realgdp realcons realinv m1, held weekly
  (mean-reverting step series).
- target ``forward_returns``: NEXT week's co2 log-change x 100, i.e. dlog_co2 shifted one
  row back. A future value, used only as a target (never a feature); NaN where either
  week is missing and on the last row.

    python benchmarks/real_panel.py [--out /tmp/real_panel/train.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.datasets import co2, macrodata

PUBLICATION_LAG = pd.Timedelta(days=30)  # about the advance-GDP release lag
MACRO_LEVELS = "realgdp realcons realinv cpi m1 tbilrate unemp infl realint".split()
MACRO_GROWTH = "realgdp realcons realinv m1".split()


def build_panel() -> pd.DataFrame:
    weekly = co2.load_pandas().data["co2"].astype(float)  # W-SAT index, gaps are NaN
    out = pd.DataFrame({"week": weekly.index, "co2": weekly.to_numpy()})
    out["dlog_co2"] = 100 * np.log(out["co2"]).diff()  # NaN next to a missing week

    m = macrodata.load_pandas().data
    quarter_end = pd.PeriodIndex.from_fields(
        year=m["year"].astype(int), quarter=m["quarter"].astype(int), freq="Q"
    ).end_time.normalize()
    macro = m[MACRO_LEVELS].copy()
    macro.loc[0, ["infl", "realint"]] = np.nan  # 1959Q1 holds 0.00 placeholders (no prior cpi)
    for col in MACRO_GROWTH:
        macro[f"g_{col}"] = 100 * np.log(m[col]).diff()
    macro["published"] = (quarter_end + PUBLICATION_LAG).to_numpy().astype("datetime64[ns]")
    out["week"] = out["week"].astype("datetime64[ns]")
    out = pd.merge_asof(out, macro, left_on="week", right_on="published", direction="backward")

    out["forward_returns"] = out["dlog_co2"].shift(-1)  # target only: next week's change
    out.insert(0, "date_id", np.arange(len(out), dtype=np.int64))
    return out.drop(columns=["week", "published"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/real_panel/train.csv")
    out = Path(ap.parse_args().out)
    out.parent.mkdir(parents=True, exist_ok=True)
    panel = build_panel()
    panel.to_csv(out, index=False)
    print(f"wrote {out}: {panel.shape[0]} rows x {panel.shape[1]} columns")
    print("missing per column:", panel.isna().sum().to_dict())
    data = f"data=csv data.path={out} data.targets=[forward_returns]"
    logs = f"paths.log_dir={out.parent}/outputs"
    print("\nrun from the project root:")
    print(f"python cluster.py {data} {logs}")
    print(f"python train.py experiment=cpu_all_clusters {data} {logs}")
    print(f"python denoise.py {data} {logs}")
    print(f"python evaluate.py {data} {logs}")


if __name__ == "__main__":
    main()
