"""Typed configs: the type, range or choices of every key users set, checked before a run.

conf/*.yaml stay the one source of defaults. The dataclasses below hold no default values
(every field is MISSING); they say what a key may hold. ``check(cfg, stage)`` takes the
keys of the schema the composed config has, merges them into
``OmegaConf.structured(<schema>)`` (OmegaConf's own type checks: lists, mappings, nested
nodes), refuses text where a number or true/false belongs (OmegaConf would convert "64"
or "no", but the jobs read the composed config as it is), then checks each field's range
or choices (``metadata``) and a few relations between keys. A failure is a
``ConfigValueError`` with one line naming the key, its value and what it may be.

Where it runs (docs/design.md "Failures and paths"):

- ``CheckConfig``, a Hydra callback (conf/hydra/default.yaml): ``on_run_start`` runs
  before Hydra creates the run directory, ``on_multirun_start`` before the sweep
  directory (the values a sweep lists, ``-m stride=1,-1``, are checked one by one there
  too). It prints the line and exits 2, so nothing is read and nothing is written.
- ``check`` again at the start of each job (a library call through Hydra's compose API,
  e.g. ``Denoiser.fit``, has no callbacks): a ConfigError that cli.fail_cleanly reports.

Keys a stage does not have (data.n_rows under data=csv, sampler keys of another sampler)
are skipped; keys the schema does not list are not checked here (the library checks
them where it uses them).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamba_denoiser.errors import ConfigError

# Choices the library defines in modules that import torch or scikit-learn; kept equal to
# them by tests/test_config_schema.py.
DATA_KINDS = ("synthetic", "csv")
NOISE_DISTS = ("mixed", "gaussian", "student_t", "outliers", "jumps", "factors")
DIRECTIONS = ("causal", "bidirectional")
BACKENDS = ("auto", "reference", "fused", "triton", "mamba_ssm")
HEADS = ("diffusion", "predictive", "both")
LOSS_STRATEGIES = ("auto", "tv", "fourier", "balanced", "none")
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("posterior_mean", "sdedit", "predictive")
MODES = ("causal", "offline")
CRITERIA = ("silhouette", "stability", "gap", "elbow")
CANDIDATES = ("diffusion", "predictive", "kalman", "robust", "combiner")
BASELINES = ("ema", "kalman_level", "kalman_ar1", "kalman_ari1", "savgol", "hp")


class ConfigValueError(ConfigError):
    """A config value of the wrong type, out of range or not among the choices."""


def _v(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A schema field without a default (conf/ has them) and with its allowed values."""
    rules = dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices)
    return field(default=MISSING, metadata={k: v for k, v in rules.items() if v is not None})


def _node(cls: type) -> Any:
    return field(default_factory=cls)


# ---- data (every stage) ------------------------------------------------------------------


@dataclass
class Split:
    train: float = _v(gt=0, le=1)
    val: float = _v(ge=0, le=1)
    test: float = _v(ge=0, le=1)
    embargo: int = _v(ge=0)


@dataclass
class Data:
    kind: str = _v(choices=DATA_KINDS)
    path: str | None = _v()
    id_col: str = _v()
    targets: list[str] = _v()
    exclude: list[str] = _v()
    window_size: int = _v(ge=2)
    anchor_len: int = _v(ge=0)
    split: Split = _node(Split)
    max_discrete_values: int = _v(ge=0)
    min_train_obs: int | None = _v(ge=1)
    interior_gaps: str = _v(choices=("mask", "error"))
    # data=synthetic only
    n_rows: int = _v(ge=1)
    seed: int = _v()
    noise_scale: float = _v(gt=0)
    noise_dist: str = _v(choices=NOISE_DISTS)


# ---- train.py ----------------------------------------------------------------------------


@dataclass
class Optim:
    lr: float = _v(gt=0)
    weight_decay: float = _v(ge=0)
    warmup_steps: int = _v(ge=0)
    min_lr_ratio: float = _v(ge=0, le=1)


@dataclass
class TSampling:
    kind: str = _v(choices=("lognormal", "uniform"))
    c: float = _v(gt=0)
    spread: float = _v(ge=0)
    uniform_share: float = _v(ge=0, le=1)


@dataclass
class Model:
    direction: str = _v(choices=DIRECTIONS)
    d_model: int = _v(ge=1)
    n_layers: int = _v(ge=1)
    d_state: int = _v(ge=1)
    d_conv: int = _v(ge=1)
    expand: int = _v(ge=1)
    dropout: float = _v(ge=0, lt=1)
    use_mask: bool = _v()
    backend: str = _v(choices=BACKENDS)


@dataclass
class Head:
    name: str = _v(choices=HEADS)
    n_components: int = _v(ge=1)
    weight: float = _v(ge=0)
    var_floor: float = _v(gt=0)
    residual: bool = _v()
    monitor: str = _v()


@dataclass
class Sde:
    num_diffusion_timesteps: int = _v(ge=2)
    beta_min: float = _v(gt=0, lt=1)
    beta_max: float = _v(gt=0, lt=1)
    schedule: str = _v(choices=SCHEDULES)


@dataclass
class Loss:
    strategy: str = _v(choices=LOSS_STRATEGIES)
    guidance_weight: float = _v(ge=0)
    tv_weight: float = _v(ge=0)
    fourier_weight: float = _v(ge=0)


@dataclass
class Trainer:
    """The Lightning Trainer keywords users set most; the others go to Lightning as given."""

    max_epochs: int = _v(ge=-1)
    num_nodes: int = _v(ge=1)
    gradient_clip_val: float | None = _v(ge=0)
    log_every_n_steps: int = _v(ge=1)
    check_val_every_n_epoch: int | None = _v(ge=1)
    num_sanity_val_steps: int = _v(ge=-1)
    limit_train_batches: float | None = _v(ge=0)  # a count or a fraction
    limit_val_batches: float | None = _v(ge=0)
    deterministic: bool | None = _v()
    enable_model_summary: bool = _v()


@dataclass
class TrainConfig:
    data: Data = _node(Data)
    clusters: str | None = _v()
    ckpt_path: str | None = _v()
    seed: int = _v()
    stationary_anchor: str = _v(choices=("constant", "window"))
    batch_size: int = _v(ge=1)
    stride: int = _v(ge=1)
    val_stride: int = _v(ge=1)
    min_observed_frac: float = _v(gt=0, le=1)
    num_workers: int = _v(ge=0)
    optim: Optim = _node(Optim)
    t_sampling: TSampling = _node(TSampling)
    compile: bool = _v()
    validate_at_init: bool = _v()
    model: Model = _node(Model)
    head: Head = _node(Head)
    sde: Sde = _node(Sde)
    loss: Loss = _node(Loss)
    trainer: Trainer = _node(Trainer)


# ---- denoise.py and evaluate.py ----------------------------------------------------------


@dataclass
class Sampler:
    """conf/sampler/: each option has some of these keys."""

    name: str = _v(choices=SAMPLERS)
    c: float = _v(gt=0)
    t_levels: int = _v(ge=1)
    constant: str = _v(choices=("total_noise", "noise2score"))
    method: str = _v(choices=("ddim", "ddpm"))
    steps: int | None = _v(ge=1)
    n_samples: int = _v(ge=1)
    eta: float = _v(ge=0)
    t_start: int | None = _v(ge=1)
    quantiles: list[float] = _v()
    guidance: str | None = _v(choices=("auto", "none", "tv", "fourier", "balanced"))
    guidance_scale: float = _v(ge=0)


@dataclass
class DenoiseConfig:
    data: Data = _node(Data)
    sampler: Sampler = _node(Sampler)
    clusters: str | None = _v()
    checkpoints: str | None = _v()
    output: str | None = _v()
    mode: str = _v(choices=MODES)
    bands: bool = _v()
    allow_partial: bool = _v()
    candidates: list[str] | None = _v(choices=CANDIDATES)  # of each item
    sigma: dict[str, float] | None = _v()
    gate: bool = _v()
    gate_margin_db: float = _v(ge=0)
    seed: int = _v()
    batch_windows: int = _v(ge=1)
    n_jobs: int = _v(ge=1)
    plots: bool = _v()


@dataclass
class Method:
    name: str = _v()
    sampler: str = _v(choices=SAMPLERS)
    mode: str = _v(choices=MODES)
    bands: bool = _v()
    sampler_kw: dict[str, Any] | None = _v()


@dataclass
class Leakage:
    perturbation_methods: list[str] | None = _v()


@dataclass
class Downstream:
    enabled: bool = _v()
    denoised_method: str = _v()
    n_splits: int = _v(ge=1)
    k: float = _v(ge=0)


@dataclass
class EvaluateConfig:
    data: Data = _node(Data)
    clusters: str | None = _v()
    checkpoints: str | None = _v()
    allow_partial: bool = _v()
    truth: str | None = _v()
    truth_families: str | None = _v()
    gate: bool = _v()
    gate_margin_db: float = _v(ge=0)
    seed: int = _v()
    plots: bool = _v()
    results_md: str | None = _v()
    n_jobs: int = _v(ge=1)
    baselines: list[str] = _v(choices=BASELINES)  # of each item
    samplers: dict[str, Sampler] = _v()
    methods: list[Method] = _v()
    leakage: Leakage = _node(Leakage)
    downstream: Downstream = _node(Downstream)


# ---- cluster.py --------------------------------------------------------------------------


@dataclass
class Clustering:
    k: int | None = _v(ge=1)
    k_min: int = _v(ge=2)
    k_max: int = _v(ge=2)
    criterion: str = _v(choices=CRITERIA)
    n_init: int = _v(ge=1)
    seed: int = _v()
    rolling_window: int = _v(ge=2)
    min_size: int = _v(ge=1)
    n_bootstrap: int = _v(ge=1)
    stability_threshold: float = _v(ge=0, le=1)
    comovement: bool = _v()


@dataclass
class ClusterConfig:
    data: Data = _node(Data)
    clustering: Clustering = _node(Clustering)
    plots: bool = _v()
    n_jobs: int = _v(ge=1)


SCHEMAS: dict[str, type] = {
    "cluster": ClusterConfig,
    "train": TrainConfig,
    "denoise": DenoiseConfig,
    "evaluate": EvaluateConfig,
}


# ---- the check ---------------------------------------------------------------------------

_ABSENT = object()


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _present(node: Any, schema: type) -> dict[str, Any]:
    """The values (interpolations resolved) of the schema's keys that `node` has."""
    out: dict[str, Any] = {}
    hints = _type_hints(schema)
    for f in dataclasses.fields(schema):
        if not isinstance(node, DictConfig) or f.name not in node:
            continue
        if OmegaConf.is_missing(node, f.name):
            continue  # ??? stays for the job to report (e.g. data.path of data=csv)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            child = node[f.name]
            if isinstance(child, DictConfig):
                out[f.name] = _present(child, tp)
                continue
        value = node[f.name]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        out[f.name] = value
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value) if value is None else str(value)


def _what(tp: Any, meta: dict | None = None) -> str:
    """What a field of type ``tp`` with these rules may hold, in words."""
    tp, optional = _strip_optional(tp)
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
    if meta and "choices" in meta and get_origin(tp) is not list:
        what = _rules(meta)
    elif tp in names:
        what = names[tp] + (f" {_rules(meta)}" if meta else "")
    elif get_origin(tp) is list:
        what = "a list, e.g. [a,b]"
    elif get_origin(tp) is dict:
        what = "a mapping, e.g. {key: value} (quoted for the shell)"
    else:
        what = "a config node"
    return f"{what}, or null" if optional else what


def _rules(meta: dict) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(meta["choices"])
    parts = []
    for key, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in meta:
            parts.append(f"{sign} {meta[key]:g}")
    return " and ".join(parts)


def _fail(key: str, value: Any, expected: str) -> ConfigValueError:
    return ConfigValueError(f"{key}={_text(value)}: expected {expected}")


def _leaves(present: dict[str, Any], schema: type, prefix: str = ""):
    """(key, value, declared type, rules) of every value below the schema's nodes, lists
    and mappings of nodes included (methods[1].mode, samplers.sdedit.steps)."""
    hints = _type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in present:
            continue
        key, value, tp = f"{prefix}{f.name}", present[f.name], hints[f.name]
        inner, _ = _strip_optional(tp)
        item = (get_args(inner) or (None,))[-1]
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            yield from _leaves(value, inner, f"{key}.")
        elif dataclasses.is_dataclass(item) and isinstance(value, (list, dict)):
            items = enumerate(value) if isinstance(value, list) else value.items()
            for k, v in items:
                sub = f"{key}[{k}]." if isinstance(value, list) else f"{key}.{k}."
                if isinstance(v, dict):
                    yield from _leaves(v, item, sub)
        else:
            yield key, value, tp, dict(f.metadata)


def _scalar_types(present: dict[str, Any], schema: type) -> None:
    """Text where a number or true/false belongs, and a number where true/false belongs,
    are errors here (OmegaConf would convert "64" and "no"; the jobs read them raw)."""
    for key, value, tp, meta in _leaves(present, schema):
        inner, _ = _strip_optional(tp)
        if value is not None and (
            (inner is bool and not isinstance(value, bool))
            or (inner in (int, float) and isinstance(value, (str, bool)))
        ):
            raise _fail(key, value, _what(tp, meta))


def _ranges(present: dict[str, Any], schema: type) -> None:
    """Ranges and choices (field metadata); a list's choices apply to each item."""
    for key, value, tp, meta in _leaves(present, schema):
        if value is None or not meta:
            continue
        if isinstance(value, list):
            if "choices" in meta and any(v not in meta["choices"] for v in value):
                raise _fail(key, value, f"a list of: {', '.join(meta['choices'])}")
        elif "choices" in meta:
            if value not in meta["choices"]:
                raise _fail(key, value, _what(tp, meta))
        elif isinstance(value, (int, float)):
            x = float(value)
            bounds = (("ge", x.__ge__), ("gt", x.__gt__), ("le", x.__le__), ("lt", x.__lt__))
            if not math.isfinite(x) or any(k in meta and not ok(meta[k]) for k, ok in bounds):
                raise _fail(key, value, _what(tp, meta))


def _relations(p: dict[str, Any]) -> None:
    """Checks between keys (each names both). None between data keys: train.py, denoise.py
    and evaluate.py use the data options the upstream stage recorded unless given
    (data/remembered.py), so the composed data node is not always the one used; the data
    code checks the options it is given (SplitSpec, windows.py)."""
    c = p.get("clustering", {})
    if c.get("k") is None and "k_min" in c and "k_max" in c and c["k_min"] > c["k_max"]:
        raise ConfigValueError(
            f"clustering.k_min={c['k_min']} > clustering.k_max={c['k_max']}: "
            "expected k_min <= k_max"
        )
    sde = p.get("sde", {})
    if "beta_min" in sde and "beta_max" in sde and sde["beta_min"] > sde["beta_max"]:
        raise ConfigValueError(
            f"sde.beta_min={sde['beta_min']:g} > sde.beta_max={sde['beta_max']:g}: "
            "expected beta_min <= beta_max"
        )


def check(cfg: DictConfig, stage: str) -> None:
    """Raise ConfigValueError (one line naming the key) for the first wrong value of
    ``cfg``, the composed config of ``stage`` (cluster, train, denoise, evaluate);
    other stage names are not checked."""
    schema = SCHEMAS.get(stage)
    if schema is None:
        return
    try:
        present = _present(cfg, schema)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        key = getattr(e, "full_key", "") or "?"
        raise ConfigValueError(f"{key}: {_first_line(e)}") from None
    _scalar_types(present, schema)
    try:  # OmegaConf's type checks: lists, mappings, nested nodes
        OmegaConf.merge(OmegaConf.structured(schema), present)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "?")
        tp, meta = _field_at(schema, key)
        raise _fail(key, _lookup(present, key), _what(tp, meta)) from None
    _ranges(present, schema)
    _relations(present)


def _first_line(err: BaseException) -> str:
    return next((x.strip() for x in str(err).splitlines() if x.strip()), type(err).__name__)


def _split_key(key: str) -> list[str]:
    return [p for p in key.replace("[", ".").replace("]", "").split(".") if p]


def _lookup(present: dict[str, Any], key: str) -> Any:
    node: Any = present
    for part in _split_key(key):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return "?"
    return node


def _field_at(schema: type, key: str) -> tuple[Any, dict]:
    """(declared type, rules) at ``key``; (Any, {}) where the path leaves the schema."""
    tp: Any = schema
    meta: dict = {}
    for part in _split_key(key):
        tp, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            f = {f.name: f for f in dataclasses.fields(tp)}.get(part)
            if f is None:
                return Any, {}
            tp, meta = _type_hints(tp)[part], dict(f.metadata)
        elif get_origin(tp) in (list, dict):
            tp, meta = (get_args(tp) or (Any, Any))[-1], {}
        else:
            return Any, {}
    return tp, meta


def _type_of(schema: type, key: str) -> Any:
    return _field_at(schema, key)[0]


# ---- before Hydra writes anything --------------------------------------------------------


def _sweeps(cfg: DictConfig, stage: str) -> list[tuple[str, list[Any]]]:
    """(key, values) of the command line's sweeps over keys of the schema, e.g.
    ``-m stride=1,-1`` (group sweeps such as cluster=glob(*) are not values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    schema = SCHEMAS.get(stage)
    overrides = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        tp, _ = _strip_optional(_type_of(schema, key))
        if not o.is_sweep_override() or tp is Any or dataclasses.is_dataclass(tp):
            continue  # not a sweep, or not a value (a config group such as data=csv,synthetic)
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            continue
        try:
            values = list(o.sweep_iterator())
        except Exception:  # a sweep Hydra expands itself (glob over options)
            continue
        out.append((key, values))
    return out


def check_before_run(cfg: DictConfig, stage: str) -> None:
    """``check`` of the composed config and of every value a multirun sweeps over."""
    check(cfg, stage)
    for key, values in _sweeps(cfg, stage):
        for value in values:
            one = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
            OmegaConf.update(one, key, value, merge=False)
            check(one, stage)


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - another Hydra version: the jobs still check
    _Callback = object  # type: ignore[misc,assignment]


class CheckConfig(_Callback):  # type: ignore[misc,valid-type]
    """Hydra callback (conf/hydra/default.yaml): a wrong value is one line and exit code 2
    before Hydra creates the run or sweep directory, and before any data are read."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kw) -> None:
        self._check(config, config_name)

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kw):
        self._check(config, config_name)

    @staticmethod
    def _check(config: DictConfig, config_name: str | None) -> None:
        try:
            check_before_run(config, str(config_name or ""))
        except ConfigValueError as e:
            # Hydra's Callbacks turn an exception into a warning; SystemExit passes through
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
