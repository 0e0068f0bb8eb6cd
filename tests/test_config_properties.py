"""Whatever value a config key is given, on the command line or in a file, loading either returns a Config or
refuses with one short ConfigError line: never another exception, never a screenful of text."""

import math

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from amazonmine.core.config import SECTIONS, Config, ConfigError, dump_config, load_config
from amazonmine.core.data import LABELS

KEYS = [f"{section}.{key}" for section, model in SECTIONS.items() for key in model.model_fields]
# A fixed seed and no example database: the same examples on every run, and no .hypothesis/ in the checkout.
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True, database=None)

# Values a slip, a script or a hostile file might give: edge numbers, words YAML reads specially, text with
# control characters and other scripts, the names the config itself uses (so valid values come up too).
NUMBERS = st.one_of(st.integers(), st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, -2**63, 10**30, 10**400]),
                    st.floats(), st.sampled_from([1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, 0.5, 0.999]))
WORDS = st.sampled_from(["", " ", "~", "null", "none", "true", "off", "1e8", "0,2", "[", "{", "*a", "&a [1]", "..",
                         "!!python/object/apply:os.system ['true']", "a\x00b", "\u2028", "x" * 500, "model.h5",
                         "cosine", "expected_f2", "dark_channel", "jpg", "recall", "fbeta", *LABELS])
TEXT = st.one_of(WORDS, st.text(max_size=80), st.text(st.characters(max_codepoint=0x1F), max_size=10))
DEFAULTS = st.sampled_from([v for body in Config().to_dict().values() for v in body.values()])  # valid somewhere
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = DEFAULTS | st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(WORDS, st.text(max_size=10)), inner, max_size=4)),
    max_leaves=10)


def _loads_or_refuses_in_one_line(load, source: str) -> None:
    try:
        cfg = load()
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(source) and len(message.splitlines()) == 1, message
        assert len(message) < 400 + len(source), message
    else:
        assert isinstance(cfg, Config)
        assert Config.model_validate(cfg.to_dict()) == cfg  # what loads is a valid config
        assert yaml.safe_load(dump_config(cfg)) == cfg.to_dict()


@EXAMPLES
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_given_with_set_loads_or_is_one_line(key, value):
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True)
    _loads_or_refuses_in_one_line(lambda: load_config(None, [f"{key}={text}"]), f"--set {key}")


@EXAMPLES
@given(key=st.sampled_from(KEYS), text=TEXT)
def test_any_raw_text_given_with_set_loads_or_is_one_line(key, text):
    _loads_or_refuses_in_one_line(lambda: load_config(None, [f"{key}={text}"]), f"--set {key}")


@EXAMPLES
@given(key=st.sampled_from(KEYS), value=VALUES)
# A mapping's key is input too: once echoed whole (500 characters) and with its line break.
@example(key="scan.min_probability", value={"x" * 500: None})
@example(key="scan.min_probability", value={"a\nb": None})
def test_any_value_in_a_file_loads_or_is_one_line(tmp_path_factory, key, value):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    section, name = key.split(".")
    path.write_text(yaml.safe_dump({section: {name: value}}, allow_unicode=True), encoding="utf-8")
    _loads_or_refuses_in_one_line(lambda: load_config(path), str(path))
