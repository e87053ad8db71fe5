"""Configs are data: YAML recipes plus dotted command-line overrides.

A run's config is built in three layers, later ones winning:

1. ``recipes/defaults.yaml`` (every key that exists, with its default);
2. a recipe (``cifar10_lt/gcl`` names ``longtail/recipes/cifar10_lt/gcl.yaml``; a path works
   too), which may inherit from other recipes with ``base: other/recipe`` (a string or a list);
3. overrides ``key.sub=value`` (values parsed as YAML: ``optim.lr=0.05``,
   ``optim.milestones=[120,160]``, ``loss.params.m_max=0.5``).

Free-form blocks merge key by key (``loss.params.m_max=0.5`` keeps the recipe's other loss
parameters); ``loss.params={}`` clears one, and naming another component (``loss.name=ce``)
starts its ``params`` afresh.

Keys are checked against the defaults: an unknown key, or a value whose type does not match the
default's, raises :class:`~longtail.errors.ConfigError` naming it. The blocks listed in
``FREE_FORM`` accept any key (they are keyword arguments of the named component, checked when
it is built). The resolved config is saved as ``config.yaml`` in every run folder.
"""
from __future__ import annotations

import copy
import json
import math
import re
import shlex
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from .errors import ConfigError, LongTailError

FREE_FORM = {
    "data.params",
    "model.head_params",
    "sampler.params",
    "loss.params",
    "stage2.sampler.params",
    "stage2.loss.params",
}
RECIPE_ROOT = Path(str(resources.files("longtail") / "recipes"))

# YAML 1.2 floats: PyYAML follows YAML 1.1, where ``5e-4`` and ``1e6`` (no dot) are strings.
_FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` that also reads ``5e-4`` and ``1e6`` as floats (as YAML 1.2 does)."""


class _Dumper(yaml.SafeDumper):
    """``yaml.safe_dump`` that quotes strings ``_Loader`` would read as floats."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))


def yaml_load(text_or_stream: Any) -> Any:
    """Parse YAML safely, with YAML 1.2 floats (``5e-4``, ``1e6``)."""
    return yaml.load(text_or_stream, Loader=_Loader)


def read_yaml(path: Path, missing_ok: bool = False, error: type[LongTailError] = ConfigError) -> dict:
    """A YAML file holding a mapping (a recipe, a run's ``config.yaml``), parsed by :func:`yaml_load`.

    Args:
        path: The file.
        missing_ok: Return ``{}`` for a missing file instead of raising.
        error: The exception raised (``ConfigError``; ``longtail.report`` reads run folders and
            raises ``DataError``).

    Returns:
        The mapping; ``{}`` for an empty file.

    Raises:
        error: A missing (unless ``missing_ok``) or unreadable file, invalid YAML, or a top level
            that is not a mapping; the message names the file.
    """
    try:
        with open(path) as f:
            data = yaml_load(f)
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise error(f"config file not found: {path}") from None
    except OSError as err:
        raise error(f"config file {path} cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise error(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def defaults() -> dict:
    """The default config (a fresh copy)."""
    return read_yaml(RECIPE_ROOT / "defaults.yaml")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with longtail (``dataset/method``)."""
    return sorted(
        str(p.relative_to(RECIPE_ROOT).with_suffix(""))
        for p in RECIPE_ROOT.rglob("*.yaml")
        if p.name != "defaults.yaml" and not any(part.startswith("_") for part in p.relative_to(RECIPE_ROOT).parts)
    )


def recipe_path(name: str) -> Path:
    """Resolve a recipe name or a YAML path to a file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = RECIPE_ROOT / f"{name}.yaml"
    if cand.exists():
        return cand
    if p.suffix in (".yaml", ".yml"):
        raise ConfigError(f"config file not found: {name}")
    raise ConfigError(f"unknown recipe '{name}'; valid recipes: {', '.join(list_recipes())}")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested config as dotted keys: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (an
    empty mapping stays a value)."""
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def key_under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether the dotted ``key`` is one of ``prefixes`` or lies under one (``"loss.params.A"`` is
    under ``"loss"`` and ``"loss.params"``, not under ``"lo"``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _is_free(path: str) -> bool:
    return key_under(path, FREE_FORM)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str) or (isinstance(value, (int, float, bool)) and default == "auto")
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _merge(base: dict, update: dict, schema: dict, where: str, prefix: str = "") -> dict:
    """Recursively merge ``update`` into ``base``, checking keys and types against ``schema``."""
    if "name" in update and "params" in base and update["name"] != base.get("name"):
        base["params"] = {}  # a new component starts from its own defaults, not the old one's params
    for key, value in update.items():
        path = f"{prefix}{key}"
        if prefix and _is_free(prefix.rstrip(".")):
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                _merge(base[key], value, {}, where, path + ".")
            else:
                base[key] = copy.deepcopy(value)
            continue
        if key not in schema:
            valid = ", ".join(sorted(schema))
            raise ConfigError(f"unknown config key '{path}' in {where}; valid keys here: {valid}")
        default = schema[key]
        if isinstance(default, dict) and not _is_free(path):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' in {where} must be a mapping, got {value!r}")
            base.setdefault(key, {})
            _merge(base[key], value, default, where, path + ".")
        elif _is_free(path):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' in {where} must be a mapping, got {value!r}")
            if not value:
                base[key] = {}  # `loss.params={}` clears the block
            else:
                base.setdefault(key, {})
                _merge(base[key], value, {}, where, path + ".")
        else:
            if not _type_ok(default, value):
                raise ConfigError(
                    f"config key '{path}' in {where}: expected {type(default).__name__} "
                    f"(like the default {default!r}), got {type(value).__name__} {value!r}"
                )
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            base[key] = copy.deepcopy(value)
    return base


def _load_recipe_layers(name: str, seen: tuple[str, ...] = ()) -> list[tuple[dict, str]]:
    path = recipe_path(name)
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"recipe inheritance cycle through {path}")
    data = read_yaml(path)
    bases = data.pop("base", None)
    layers: list[tuple[dict, str]] = []
    for b in [bases] if isinstance(bases, str) else (bases or []):
        layers += _load_recipe_layers(b, seen + (key,))
    layers.append((data, str(path)))
    return layers


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(recipe: Optional[str] = None, overrides: Iterable[str] = (), base: Optional[dict] = None) -> dict:
    """Build a run config from the defaults, a recipe and dotted overrides.

    Args:
        recipe: Recipe name (``cifar10_lt/gcl``), a YAML path, or None for the defaults (the
            synthetic-data demo).
        overrides: ``key.sub=value`` strings.
        base: Start from this resolved config instead of the defaults + recipe (used by resume
            and stage 2).

    Returns:
        The resolved config as a plain dict; ``cfg["recipe"]`` holds the recipe name.

    Raises:
        ConfigError: An unknown key, a badly typed value, or a value out of range
            (:func:`validate_config`); the message names the key.
    """
    schema = defaults()
    schema["recipe"] = None
    explicit: set[str] = set()  # epoch-valued keys the user set (own recipe file or override)
    if base is not None:
        cfg = copy.deepcopy(base)
    else:
        cfg = copy.deepcopy(schema)
        if recipe is not None:
            for layer, where in _load_recipe_layers(recipe):
                _merge(cfg, layer, schema, where)
                if not _is_shipped(where):
                    explicit |= _set_keys(layer)
            cfg["recipe"] = recipe if not recipe.endswith((".yaml", ".yml")) else Path(recipe).stem
    for text in overrides:
        key, value = parse_override(text)
        nested = _nest(key, value)
        _merge(cfg, nested, schema, f"override '{text}'")
        explicit |= _set_keys(nested)
    validate_config(cfg, explicit_milestones="optim.milestones" in explicit)
    if base is None and "optim.milestones" not in explicit:
        late = _late_milestones(cfg)
        if late:
            warnings.warn(f"optim.milestones {cfg['optim']['milestones']} (from the recipe) lie beyond "
                          f"optim.epochs={cfg['optim']['epochs']}: the lr never steps down in this run; set "
                          f"optim.milestones to steps within the run to keep them", ConfigWarning, stacklevel=2)
    return cfg


class ConfigWarning(UserWarning):
    """A setting that is valid but probably not what was meant (named in the message)."""


def _is_shipped(where: str) -> bool:
    try:
        Path(where).resolve().relative_to(RECIPE_ROOT.resolve())
        return True
    except ValueError:
        return False


def _set_keys(tree: Any, prefix: str = "") -> set[str]:
    """Dotted keys (every level) set by a nested mapping."""
    out: set[str] = set()
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.add(f"{prefix}{k}")
            out |= _set_keys(v, f"{prefix}{k}.")
    return out


def _late_milestones(cfg: dict) -> list:
    optim = cfg.get("optim") or {}
    if optim.get("schedule") != "multistep":
        return []
    epochs = optim.get("nominal_epochs") or optim.get("epochs")
    return [m for m in optim.get("milestones") or [] if isinstance(epochs, int) and isinstance(m, int) and m > epochs]


# -- value checks ---------------------------------------------------------------------------------
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_config(cfg: dict, where: Optional[str] = None, explicit_milestones: bool = True) -> None:
    """Check the values of a resolved config (types are checked when it is merged).

    Every message names the key and says what is allowed. Called on every load: by
    :func:`load_config` (command line, recipes) and :func:`load_saved_config` (resume, eval,
    stage 2). ``explicit_milestones=False`` lets recipe/default lr milestones lie beyond a
    shortened ``optim.epochs`` (they then never apply; :func:`load_config` warns).
    """

    def err(key: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"config key '{key}'{f' in {where}' if where else ''} {what}, got {value!r}")

    def need_int(key: str, lo: int, none_ok: bool = False) -> None:
        v = get_key(cfg, key)
        if v is None and none_ok:
            return
        if not _is_int(v) or v < lo:
            raise err(key, f"must be an integer >= {lo}", v)

    def need_num(key: str, lo: float, none_ok: bool = False) -> None:
        v = get_key(cfg, key)
        if v is None and none_ok:
            return
        if not _is_num(v) or v < lo:
            raise err(key, f"must be a finite number >= {lo:g}", v)

    need_int("seed", 0)
    if cfg.get("seed") is not None and cfg["seed"] >= 2 ** 63:
        raise err("seed", "must be below 2**63", cfg["seed"])
    name = cfg.get("name")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise err("name", "must be a non-empty folder name", name)
        if "/" in name or "\\" in name or name in (".", "..") or "\0" in name or Path(name).is_absolute():
            raise err("name", "must be a plain folder name inside output_dir (no '/', '\\', '.' or '..')", name)
    if not isinstance(cfg.get("output_dir"), str) or not cfg["output_dir"]:
        raise err("output_dir", "must be a folder path", cfg.get("output_dir"))
    device = cfg.get("device")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise err("device", "must be one of auto, cpu, cuda, cuda:N, mps", device)
    # data
    need_int("data.batch_size", 1)
    need_int("data.eval_batch_size", 1)
    need_int("data.num_workers", 0)
    shots = get_key(cfg, "data.shot_thresholds")
    if (not isinstance(shots, (list, tuple)) or len(shots) != 2 or not all(_is_int(t) and t >= 0 for t in shots)):
        raise err("data.shot_thresholds", "must be [many, few], two integers >= 0 (many-shot: more than many "
                  "training images, few-shot: fewer than few)", shots)
    if shots[0] < shots[1]:
        raise err("data.shot_thresholds", "must be [many, few] with many >= few (swapped?)", shots)
    # optim
    need_int("optim.epochs", 1)
    need_num("optim.lr", 0)
    need_num("optim.momentum", 0)
    need_num("optim.weight_decay", 0)
    need_int("optim.warmup_epochs", 0)
    need_num("optim.min_lr", 0)
    ms = get_key(cfg, "optim.milestones")
    if not isinstance(ms, (list, tuple)) or not all(_is_int(m) and m >= 0 for m in ms):
        raise err("optim.milestones", "must be a list of epoch numbers >= 0", ms)
    if list(ms) != sorted(ms):
        raise err("optim.milestones", "must be in increasing order", ms)
    # folder recipes write epoch keys for optim.nominal_epochs; they move with the run's length later
    nominal = cfg["optim"].get("nominal_epochs")
    epochs, total_key = (nominal, "optim.nominal_epochs") if _is_int(nominal) and nominal > 0 else (
        cfg["optim"]["epochs"], "optim.epochs")
    if explicit_milestones and cfg["optim"].get("schedule") == "multistep" and any(m > epochs for m in ms):
        raise err("optim.milestones", f"must lie within the run (<= {total_key}={epochs}; epochs count from 0, "
                  f"a milestone equal to {total_key} never applies)", ms)
    fs = get_key(cfg, "optim.milestone_factors")
    if not isinstance(fs, (list, tuple)) or not all(_is_num(f) and f >= 0 for f in fs):
        raise err("optim.milestone_factors", "must be a list of numbers >= 0", fs)
    # mixup, eval, stage 2
    need_num("mixup.alpha", 0)
    need_int("mixup.until_epoch", 0, none_ok=True)
    every = get_key(cfg, "eval.every")
    if every != "auto" and (not _is_int(every) or every < 1):
        raise err("eval.every", "must be a positive number of epochs (or 'auto')", every)
    if isinstance(cfg.get("stage2"), dict):
        need_int("stage2.epochs", 1)
        need_num("stage2.lr", 0)
        need_int("stage2.warmup_epochs", 0)
        need_num("stage2.weight_decay", 0)
        need_num("stage2.mixup_alpha", 0)
        need_int("stage2.batch_size", 1, none_ok=True)


#: First line of a run's ``config.yaml``: the command that created the run (a YAML comment).
COMMAND_HEADER = "# command: longtail "


def save_config(cfg: dict, path: Path, command: Optional[Iterable[str]] = None) -> None:
    """Write a resolved config as YAML, headed by the command that created the run where given.

    The command is a comment line (``# command: longtail train cifar10_lt/ce seed=1``), so the
    file stays the resolved config; :func:`saved_command` reads it back. A run resumed with
    ``longtail train --resume DIR`` still reports the command that created it.
    """
    with open(path, "w") as f:
        if command is not None:
            f.write(COMMAND_HEADER + shlex.join(str(a) for a in command).replace("\n", " ") + "\n")
        yaml.dump(cfg, f, Dumper=_Dumper, sort_keys=False)


def saved_command(path: Path) -> Optional[list]:
    """The command that created a run, from the header of its ``config.yaml``.

    Returns None for a run saved without a header (made before longtail wrote one). A header that
    is present but cannot be split (e.g. an unbalanced quote from a hand edit) also gives None,
    with a warning naming the file, so that the caller falls back to the current command instead
    of losing the run's metrics.
    """
    try:
        with open(path) as f:
            first = f.readline()
    except OSError:
        return None
    if not first.startswith(COMMAND_HEADER):
        return None
    try:
        return shlex.split(first[len(COMMAND_HEADER):])
    except ValueError as e:
        warnings.warn(f"{path}: the '{COMMAND_HEADER.strip()}' header cannot be read ({e}); "
                      f"the run's metrics will name the current command instead", stacklevel=2)
        return None


def load_saved_config(path: Path) -> dict:
    """Read a run folder's saved config and check it against the schema, as on the command line.

    A key the schema lacks, a badly typed or out-of-range value (e.g. a hand-edited
    ``config.yaml``) raises ConfigError naming the file and the key; keys added to longtail
    since the run was saved take their defaults.
    """
    path = Path(path)
    saved = read_yaml(path)
    schema = defaults()
    schema["recipe"] = None
    where = f"saved config {path}"
    lost = [k for k in ("data", "model", "loss", "optim") if k not in saved]
    if lost:
        raise ConfigError(f"{where} lacks the block(s) {', '.join(lost)}: it is not the config this run was "
                          f"trained with (restore it, or start a new run)")
    cfg = _merge(copy.deepcopy(schema), saved, schema, where)
    validate_config(cfg, where, explicit_milestones=False)
    return cfg


def get_key(cfg: dict, dotted: str) -> Any:
    """The value at ``a.b.c`` in a config, or None where the path does not exist."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


#: Epoch-valued keys that move with ``optim.epochs`` (stage 1) and ``stage2.epochs`` (stage 2).
EPOCH_KEYS_STAGE1 = ("optim.warmup_epochs", "optim.milestones", "loss.params.ga_epoch",
                     "loss.params.drw_epoch", "mixup.until_epoch")
EPOCH_KEYS_STAGE2 = ("stage2.warmup_epochs",)
#: Keys whose scaled value must stay a trained epoch (< epochs) so the switch still happens;
#: the others (lr milestones, end of mixup) may reach ``epochs`` (= never within the run).
SWITCH_KEYS = ("loss.params.ga_epoch", "loss.params.drw_epoch")


def _scale_epochs(value: Any, factor: float, upper: int) -> Any:
    """Scale an epoch index (or a list of them) by ``factor``, rounded, within [0, upper]."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        scaled = [_scale_epochs(v, factor, upper) for v in value]
        return None if any(v is None for v in scaled) else scaled
    if not isinstance(value, (int, float)):
        return None
    return int(min(max(round(value * factor), 0), max(upper, 0)))


def scaled_epoch_overrides(cfg: dict, total_key: str, new_total: int, keys: Iterable[str],
                           skip: Iterable[str] = ()) -> list[str]:
    """Overrides that keep the epoch-valued ``keys`` of ``cfg`` in place when ``total_key``
    (e.g. ``optim.epochs``) becomes ``new_total``: a shortened run keeps its lr steps, warm-up
    and loss switches (DRW, GA) at the same fraction of training. Keys in ``skip`` (set by the
    user) and unchanged values are left out; nothing is returned when the total is unchanged.
    """
    old_total = get_key(cfg, total_key)
    if not isinstance(new_total, int) or isinstance(new_total, bool) or not old_total or new_total == old_total:
        return []
    factor = new_total / float(old_total)
    skip = set(skip)
    out = []
    for key in keys:
        if key in skip:
            continue
        old = get_key(cfg, key)
        if key.endswith("warmup_epochs") and isinstance(old, (int, float)):
            new = int(round(old * factor))  # a warm-up may shrink to 0 epochs
        else:
            new = _scale_epochs(old, factor, new_total - 1 if key in SWITCH_KEYS else new_total)
        if new is None or new == old:
            continue
        out.append(f"{key}={json.dumps(new, separators=(',', ':'))}")
    return out
