"""The one config schema: data, model, strategy and run settings of one run.

A :class:`Config` is built once, by the command line (:func:`cl_iad.cli.config_from_args`), a
sweep (:func:`cl_iad.sweep.expand`) or a saved model (:func:`cl_iad.deploy.load_strategy`), and
everything is built from it: :meth:`Config.build_scenario`, :meth:`Config.build_strategy` and
:meth:`Config.run_kwargs` (the runner's settings, the config itself included, which the runner
writes as ``RUN_DIR/config.yaml``). ``cl-iad run --config RUN_DIR/config.yaml --out OTHER`` then
repeats the run cell for cell.

On disk the config is YAML with four sections::

    data:     {dataset, root, categories, group, order, n_tasks, image_size, skip_bad,
               n_train, n_test_good, n_test_per_defect}
    model:    {name, preset, params: {constructor arguments}, device}
    strategy: {name, eval_mode, params: {regime hyper-parameters: buffer_size, ewc_lambda, ...}}
    run:      {out, name, metrics, seed, wandb, checkpoint, cache_dir, cache_memory_mb,
               cache_device_mb, bank_budget, overwrite, progress}

Missing keys take the defaults below (the command line's defaults); an unknown key is refused
with the allowed ones. This module imports nothing heavy and not the loop (the loop imports
:mod:`cl_iad.deploy`, which imports this module).
"""

from __future__ import annotations

import copy
import inspect
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)

SECTIONS = ("data", "model", "strategy", "run")


class ConfigError(UserError, ValueError):
    """A config file or mapping holds an unknown key or a value of the wrong type."""


@dataclass
class DataConfig:
    """Which images, in which tasks and order (see :func:`cl_iad.scenarios.streams.build_scenario`)."""

    dataset: str = "synthetic"
    root: str | list[str] | None = None  # synthetic: where to generate (default a temp dir)
    categories: list[str] | None = None
    group: str | int | None = None  # literature protocols: "14-1", "10-5", "3x5", "10-1x5"
    order: str = "alphabetical"  # alphabetical | reverse | random:SEED | comma-separated names
    n_tasks: int = 5  # synthetic without categories: how many
    image_size: int | None = None  # default 128 synthetic, 256 datasets
    skip_bad: bool = False
    n_train: int | None = None  # synthetic sizes per category (None: the generator's defaults)
    n_test_good: int | None = None
    n_test_per_defect: int | None = None
    layout: str = "default"  # synthetic: "default", or "mvtec_scale" (MVTec AD's 15 categories and exact counts)


@dataclass
class ModelConfig:
    """A registered model (``cl-iad models``): class defaults, then the preset, then `params`."""

    name: str = "patchcore"
    preset: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    device: str | None = None  # None: the model's default


@dataclass
class StrategyConfig:
    """The continual regime and its hyper-parameters (keyword arguments of the strategy)."""

    name: str = "naive"  # a regime such as "replay" or a combination such as "replay+ewc"
    eval_mode: str = "aware"  # aware | agnostic
    params: dict[str, Any] = field(default_factory=dict)  # buffer_size, buffer_policy, ewc_lambda, lwf_alpha, ...


@dataclass
class RunConfig:
    """Where results go and how the loop runs (the command line's defaults)."""

    out: str = "results"
    name: str | None = None  # run folder name; None: derived from dataset, model, regime and order
    metrics: list[str] = field(default_factory=lambda: _all_metrics())
    seed: int = 0  # model, strategy and synthetic data
    wandb: str = "offline"  # off | offline | online
    checkpoint: bool = True
    cache_dir: str | None = None
    cache_memory_mb: float | None = None  # host-memory tier of the feature cache
    cache_device_mb: float | None = None  # GPU tier of the feature cache (past it: pinned host memory)
    bank_budget: int | None = None  # memory-bank models: cap on memory-bank rows (max_bank_size)
    overwrite: bool = False
    progress: bool = True


_SECTION_TYPES: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "strategy": StrategyConfig,
                                   "run": RunConfig}


@dataclass
class Config:
    """Everything one run needs, and everything it records in ``RUN_DIR/config.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping | None, source: str | Path | None = None) -> Config:
        """A config from its nested mapping; missing keys take defaults.

        An unknown section or key, or a value of the wrong type, is a :class:`ConfigError` naming
        it, the allowed ones and `source` (the file it came from).
        """
        where = f"{source}: " if source is not None else ""
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}a config is a mapping with the sections {', '.join(SECTIONS)}; "
                              f"got {type(data).__name__}")
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ConfigError(f"{where}unknown section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
        return cls(**{name: _section(name, data.get(name), where) for name in SECTIONS})

    def to_dict(self) -> dict:
        """The nested mapping of plain values (YAML- and JSON-safe)."""
        return _plain(asdict(self))

    @classmethod
    def from_yaml(cls, path: Path | str) -> Config:
        """Read a config file (the nested format of ``RUN_DIR/config.yaml``)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path} is not readable YAML ({_first_line(exc)}); fix or rewrite it") from exc
        return cls.from_dict(data, source=path)

    def to_yaml(self, path: Path | str | None = None) -> str:
        """The config as YAML text; also written to `path` (atomically) when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        if path is not None:
            from .results import atomic_write_text

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(path), text)
        return text

    # ---- one config per regime -----------------------------------------------------------
    def regimes(self) -> list[str]:
        """The regimes named by ``strategy.name`` (the command line accepts several, comma-separated)."""
        return [r.strip() for r in str(self.strategy.name).split(",") if r.strip()] or ["naive"]

    def for_each_regime(self) -> list[Config]:
        """One config per regime of a comma-separated ``strategy.name``, each describing one run.

        With a run name and several regimes, each run is named ``NAME-REGIME``.
        """
        regimes = self.regimes()
        out = []
        for regime in regimes:
            name = self.run.name if self.run.name is None or len(regimes) == 1 else f"{self.run.name}-{regime}"
            out.append(replace(copy.deepcopy(self), strategy=replace(copy.deepcopy(self.strategy), name=regime),
                               run=replace(copy.deepcopy(self.run), name=name)))
        return out

    # ---- building ------------------------------------------------------------------------
    def check(self) -> Config:
        """Refuse, before any data is read, an unknown model, a regime it lacks or a bank budget it ignores."""
        from .models.registry import model_info
        from .strategies.registry import SEPARATOR, regimes_for

        info = model_info(self.model.name)
        available = regimes_for(info)
        bad = [part.strip() for regime in self.regimes() for part in regime.split(SEPARATOR)
               if part.strip() not in available]
        if bad:
            raise ConfigError(f"strategy {bad} not available for {info.name}; choose from {', '.join(available)} "
                              f"(or combine them with '{SEPARATOR}')")
        if self.run.bank_budget is not None and not _accepts(info.load(), "max_bank_size"):
            raise ConfigError(f"--bank-budget applies to memory-bank models such as patchcore, not "
                              f"{self.model.name!r}; drop the option")
        return self

    def build_scenario(self):
        """The task stream of ``data`` (synthetic data is generated with ``run.seed``)."""
        from .scenarios.folder import build_scenario

        d = self.data
        sizes = {k: getattr(d, k) for k in ("n_train", "n_test_good", "n_test_per_defect") if getattr(d, k) is not None}
        return build_scenario(d.dataset, d.root, d.categories, d.order, d.group, d.image_size, skip_bad=d.skip_bad,
                              seed=self.run.seed, n_tasks=d.n_tasks, progress=self.run.progress, layout=d.layout,
                              **sizes)

    def build_cache(self):
        """A feature cache with ``run.cache_dir``, ``cache_memory_mb`` and ``cache_device_mb`` (share it between
        regimes)."""
        from .cache import FeatureCache

        return FeatureCache(self.run.cache_dir, self.run.cache_memory_mb, max_device_mb=self.run.cache_device_mb)

    def build_model(self):
        """The model: registry defaults, the preset, ``model.params``, the run's seed and device."""
        from .models.registry import build_model, model_info

        kwargs: dict[str, Any] = {"seed": self.run.seed, **self.model.params}
        cls = model_info(self.model.name).load()
        if self.model.device is not None:
            if _accepts(cls, "device"):
                kwargs["device"] = self.model.device
            else:
                log.warning("device %s ignored: %s runs on its own device", self.model.device, self.model.name)
        if self.run.bank_budget is not None:
            kwargs["max_bank_size"] = self.run.bank_budget
        return build_model(self.model.name, self.model.preset, **kwargs)

    def build_strategy(self, cache=None):
        """The model under ``strategy.name``: ``Strategy(model, name, seed, eval_mode, cache, **params)``.

        The strategy keeps this config (``spec_``) so a saved model records how to rebuild it.
        """
        from .strategies import Strategy

        if len(self.regimes()) != 1:
            raise ConfigError(f"strategy {self.strategy.name!r} names several regimes; build one config per "
                              "regime with Config.for_each_regime()")
        strategy = Strategy(self.build_model(), self.strategy.name, seed=self.run.seed,
                            eval_mode=self.strategy.eval_mode, cache=cache, **self.strategy.params)
        strategy.spec_ = self.to_dict()
        return strategy

    def run_kwargs(self) -> dict:
        """Keyword arguments of :func:`cl_iad.runner.run` for this config, `spec` (config.yaml) included."""
        r = self.run
        return {"out_dir": r.out, "name": r.name, "metrics": list(r.metrics), "wandb": r.wandb,
                "progress": r.progress, "overwrite": r.overwrite, "checkpoint": r.checkpoint, "spec": self.to_dict()}

    # ---- saved models ----------------------------------------------------------------------
    @classmethod
    def from_build_args(cls, model_args: Mapping, strategy_args: Mapping, preset: str | None = None) -> Config:
        """The config of a model and strategy known only by their constructor arguments.

        `model_args` is ``model.build_args_`` (name and merged constructor arguments, the preset's
        included) and `strategy_args` is ``Strategy.build_args()``: what saved models of earlier
        versions record in strategy.json.
        """
        from .models.registry import preset_kwargs

        margs = dict(model_args)
        name = margs.pop("name")
        device = margs.pop("device", None)
        sargs = dict(strategy_args)
        regime = sargs.pop("regime", "naive")
        seed = sargs.pop("seed", 0)
        eval_mode = sargs.pop("eval_mode", "aware")
        if margs.get("seed", seed) == seed:
            margs.pop("seed", None)  # the run's seed; a different model seed stays a param
        if preset is not None:
            fixed = preset_kwargs(name, preset)
            margs = {k: v for k, v in margs.items() if k not in fixed or fixed[k] != v}
        return cls(model=ModelConfig(name=name, preset=preset, params=margs, device=device),
                   strategy=StrategyConfig(name=regime, eval_mode=eval_mode, params=sargs),
                   run=RunConfig(seed=seed))

    @classmethod
    def of_strategy(cls, strategy) -> Config:
        """The config a strategy was built from (:meth:`build_strategy`), else one rebuilt from its arguments."""
        spec = getattr(strategy, "spec_", None)
        if spec is not None:
            return cls.from_dict(spec)
        build = getattr(strategy.model, "build_args_", None)
        if build is None:
            raise ValueError(f"model {strategy.model.name!r} was not built with build_model(); cannot record how "
                             "to rebuild it")
        return cls.from_build_args(build, strategy.build_args(), getattr(strategy.model, "preset_", None))


def _all_metrics() -> list[str]:
    from .results import METRICS

    return list(METRICS)


def _section(name: str, values: Any, where: str):
    """One section's dataclass from its mapping, every key and type checked."""
    cls = _SECTION_TYPES[name]
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}section {name!r} must be a mapping of keys "
                          f"({', '.join(f.name for f in fields(cls))}); got {values!r}")
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}unknown key {name}.{unknown[0]}; allowed in {name}: {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        value = _normalise(key, value)
        if not _matches(value, hints[key]):
            raise ConfigError(f"{where}{name}.{key} must be {_describe(hints[key])}, got {value!r}")
        kwargs[key] = copy.deepcopy(value)
    return cls(**kwargs)


def _normalise(key: str, value: Any) -> Any:
    """Accept the command line's spellings: comma-separated lists, an order as a list of names."""
    if key in ("categories", "metrics") and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if key == "order" and isinstance(value, list):
        return ",".join(map(str, value))
    if key in ("root", "cache_dir", "out") and isinstance(value, Path):
        return str(value)
    return value


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """A type hint in words: ``int | None`` -> "int or null"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _accepts(cls: type, name: str) -> bool:
    """Whether constructing `cls` takes the keyword `name` (following ``**kwargs`` up the class tree)."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False
