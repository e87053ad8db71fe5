"""Config layering, overrides and their errors."""
import pytest
import yaml

from longtail.config import key_under, list_recipes, load_config, parse_override, recipe_path
from longtail.errors import ConfigError


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg["data"]["name"] == "synthetic"
    assert cfg["recipe"] is None


def test_recipe_layers_and_inheritance():
    cfg = load_config("cifar10_lt/kps_drw")
    # from _base/cifar_lt
    assert cfg["optim"]["milestones"] == [160, 180] and cfg["optim"]["warmup_epochs"] == 5
    # from cifar10_lt/kps, merged key by key with kps_drw's own loss params
    assert cfg["loss"] == {"name": "kps", "params": {"s": 15.0, "s_base": 15.0, "n_base": 50, "m_max": 0.2,
                                                      "ga_epoch": None, "drw_epoch": 160, "beta": 0.9999}}
    assert cfg["recipe"] == "cifar10_lt/kps_drw"
    c100 = load_config("cifar100_lt/gcl")
    assert c100["data"]["name"] == "cifar100_lt" and c100["stage2"]["sampler"]["name"] == "cben"


def test_overrides_types_and_free_form_blocks():
    cfg = load_config("cifar10_lt/kps", ["optim.lr=1", "loss.params.m_max=0.5", "optim.milestones=[1, 2]",
                                         "model.head=cosine", "amp=bf16"])
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["loss"]["params"]["m_max"] == 0.5 and cfg["loss"]["params"]["s"] == 15.0
    assert cfg["optim"]["milestones"] == [1, 2]
    # naming another loss drops the old loss's parameters; {} clears a block
    assert load_config("cifar10_lt/kps", ["loss.name=ce"])["loss"] == {"name": "ce", "params": {}}
    assert load_config("cifar10_lt/kps", ["loss.params={}"])["loss"]["params"] == {}


@pytest.mark.parametrize("override, culprit", [
    ("optim.lrr=0.1", "optim.lrr"),
    ("nosuchkey=1", "nosuchkey"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.epochs=2.5", "optim.epochs"),
    ("quiet=3", "quiet"),
    ("optim.milestones=5", "optim.milestones"),
    ("data=3", "data"),
])
def test_bad_overrides_name_the_key(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ConfigError, match="cifar10_lt/gcl"):
        load_config("cifar10_lt/nope")


def test_unknown_key_in_a_recipe_file_names_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({"base": "cifar10_lt/ce", "optim": {"lr": 0.2, "speed": 3}}))
    with pytest.raises(ConfigError, match=r"optim\.speed.*mine\.yaml"):
        load_config(str(p))
    p.write_text(yaml.safe_dump({"base": "cifar10_lt/ce", "optim": {"lr": 0.2}}))
    assert load_config(str(p))["optim"]["lr"] == 0.2


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("name=null") == ("name", None)
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_every_recipe_resolves():
    names = list_recipes()
    assert len(names) >= 40 and not any(n.startswith("_") for n in names)
    for n in names:
        assert recipe_path(n).exists()
        load_config(n)


@pytest.mark.parametrize("key, prefixes, under", [
    ("loss.params.A", ["loss"], True),
    ("loss.params.A", ["loss.params"], True),
    ("loss.params.A", ["loss.params.A"], True),
    ("loss.params.A", ["lo", "loss.par"], False),  # a dotted prefix is a whole segment, not a string prefix
    ("lossy", ["loss"], False),
    ("amp", ["data", "amp"], True),
    ("amp", [], False),
])
def test_key_under_matches_whole_dotted_segments(key, prefixes, under):
    assert key_under(key, prefixes) is under


def test_saved_config_heads_with_the_command_and_reads_it_back(tmp_path):
    """The creating command survives quoting; the file is still the resolved config."""
    from longtail.config import save_config, saved_command

    cfg = load_config("cifar10_lt/ce", ["seed=3"])
    argv = ["train", "cifar10_lt/ce", "seed=3", "name=a b", "optim.milestones=[82,123]", "it's"]
    path = tmp_path / "config.yaml"
    save_config(cfg, path, command=argv)
    assert path.read_text().startswith("# command: longtail train cifar10_lt/ce seed=3 'name=a b' ")
    assert saved_command(path) == argv
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(yaml.safe_dump(cfg))
    save_config(cfg, path)  # no command: no header, and none is read
    assert saved_command(path) is None and not path.read_text().startswith("#")
    assert saved_command(tmp_path / "missing.yaml") is None


def test_unreadable_command_header_warns_naming_the_file(tmp_path):
    """A hand-broken header (unbalanced quote) gives None and a warning, never an exception."""
    from longtail.config import save_config, saved_command

    path = tmp_path / "config.yaml"
    save_config(load_config("cifar10_lt/ce"), path, command=["train", "cifar10_lt/ce"])
    text = path.read_text().replace("cifar10_lt/ce\n", "'cifar10_lt/ce\n", 1)
    path.write_text(text)
    with pytest.warns(UserWarning, match=r"config\.yaml.*header cannot be read"):
        assert saved_command(path) is None
