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
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from .errors import ConfigError

FREE_FORM = {
    "data.params",
    "model.head_params",
    "sampler.params",
    "loss.params",
    "stage2.sampler.params",
    "stage2.loss.params",
}
RECIPE_ROOT = Path(str(resources.files("longtail") / "recipes"))


def _read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def defaults() -> dict:
    """The default config (a fresh copy)."""
    return _read_yaml(RECIPE_ROOT / "defaults.yaml")


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


def _is_free(path: str) -> bool:
    return any(path == f or path.startswith(f + ".") for f in FREE_FORM)


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
    data = _read_yaml(path)
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
        value = yaml.safe_load(raw) if raw.strip() else None
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
    """
    schema = defaults()
    schema["recipe"] = None
    if base is not None:
        cfg = copy.deepcopy(base)
    else:
        cfg = copy.deepcopy(schema)
        if recipe is not None:
            for layer, where in _load_recipe_layers(recipe):
                _merge(cfg, layer, schema, where)
            cfg["recipe"] = recipe if not recipe.endswith((".yaml", ".yml")) else Path(recipe).stem
    for text in overrides:
        key, value = parse_override(text)
        _merge(cfg, _nest(key, value), schema, f"override '{text}'")
    return cfg


def save_config(cfg: dict, path: Path) -> None:
    """Write a resolved config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def load_saved_config(path: Path) -> dict:
    """Read a run folder's saved config (no recipe resolution)."""
    return _read_yaml(Path(path))


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
