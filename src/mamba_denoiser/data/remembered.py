"""Which data options a stage uses: the ones given, else those recorded upstream.

cluster.py records its resolved `data` options in clusters.json (source.data_config, via
Panel.summary), and train.py copies that source into every checkpoint. A later stage run
without data options (`python denoise.py`) therefore reads the same file with the same
split, window and column roles instead of silently building the built-in panel.

Options given on the command line win only where they agree with the record, or where they
name the data itself (the file, or the built-in panel's knobs: denoising other data with
the same models is legitimate, and each stage's sha256 check says so). An option that
changes how the data are read (split, window, targets, ...) and disagrees with the record
is an error naming both values: the checkpoints were fitted under the recorded one.

`data.path=FILE` given without a `data=` choice means a CSV (``path_means_csv``): the
default group is the built-in panel, whose `path` is only its cache file, and reading a
user's file as that cache would regenerate the synthetic panel over it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mamba_denoiser.errors import DataOptionsError

# Keys that say WHICH data (may differ from the record) vs HOW they are read (may not).
IDENTITY_KEYS = frozenset({"kind", "path", "n_rows", "seed", "noise_scale", "noise_dist"})
SYNTHETIC_ONLY = frozenset({"n_rows", "seed", "noise_scale", "noise_dist"})


def given_data_keys(overrides: Sequence[str]) -> set[str]:
    """Dotted `data.*` keys set on the command line; a `data=GROUP` choice gives 'kind'.

    >>> sorted(given_data_keys(["data=csv", "data.path=x.csv", "+data.split.train=0.6", "seed=1"]))
    ['kind', 'path', 'split.train']
    """
    keys: set[str] = set()
    for o in overrides:
        k, sep, _ = o.lstrip("+~").partition("=")
        if not sep:
            continue
        if k == "data":
            keys.add("kind")
        elif k.startswith("data."):
            keys.add(k[len("data.") :])
    return keys


def path_means_csv(composed: Mapping[str, Any], given: set[str]) -> tuple[dict[str, Any], set]:
    """(options, given keys) with a `data.path` given without `data=...` read as a CSV.

    >>> opts, keys = path_means_csv({"kind": "synthetic", "n_rows": 9, "path": "a.csv"}, {"path"})
    >>> opts, sorted(keys)
    ({'kind': 'csv', 'path': 'a.csv'}, ['kind', 'path'])
    """
    if "path" in given and "kind" not in given and composed.get("kind") == "synthetic":
        out = {k: v for k, v in composed.items() if k not in SYNTHETIC_ONLY}
        out["kind"] = "csv"
        return out, given | {"kind"}
    return dict(composed), set(given)


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for part in head:
        d = d.setdefault(part, {})
    d[last] = value


def merge_data_options(
    composed: Mapping[str, Any],
    recorded: Mapping[str, Any] | None,
    given: set[str],
    *,
    recorded_by: str,
) -> tuple[dict[str, Any], bool]:
    """(the data options to use, whether a record was there to use).

    composed: this stage's resolved `data` node (defaults + overrides); recorded: the
    options the upstream stage ran with (None for artifacts written before this existed);
    given: the keys set on the command line (given_data_keys).
    """
    if not recorded:
        return dict(composed), False
    if not given:
        return _plain(recorded), True
    out = _plain(recorded)
    conflicts = []
    for key in sorted(given):
        top = key.split(".")[0]
        mine, theirs = _get(composed, key), _get(recorded, key)
        if top in IDENTITY_KEYS:
            continue
        if _norm(mine) != _norm(theirs):
            conflicts.append(f"data.{key}={_show(mine)} (recorded: {_show(theirs)})")
    if conflicts:
        raise DataOptionsError(
            f"{'; '.join(conflicts)}: {recorded_by} was made with the recorded value"
            f"{'s' if len(conflicts) > 1 else ''}. Drop the option to use it, or re-run the "
            "earlier stages with yours"
        )
    # Only a given `data=` choice changes the kind: the composed default (the built-in
    # panel) is not a choice, and switching to it would drop the recorded CSV.
    kind = composed.get("kind") if "kind" in given else out.get("kind")
    if kind != out.get("kind"):  # e.g. data=csv over a recorded built-in panel
        out = {k: v for k, v in out.items() if k not in SYNTHETIC_ONLY}
        out["kind"] = kind
        out["path"] = composed.get("path")
        if kind == "synthetic":  # the built-in panel over a recorded CSV: its knobs
            out.update({k: composed[k] for k in SYNTHETIC_ONLY if k in composed})
    for key in given:
        if key.split(".")[0] in IDENTITY_KEYS and key != "kind":
            _set(out, key, _get(composed, key))
    return out, True


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def _norm(v: Any) -> Any:
    """Compare 60 with 60.0 and tuples with lists as equal."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _show(v: Any) -> str:
    return "null" if v is None else str(v)
