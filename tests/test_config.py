from pathlib import Path

import pytest
from click.testing import CliRunner

from amazonmine.cli import main
from amazonmine.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "train.folds=[0,2]", "dehaze.enabled=false", "tune.start=0.3"])
    assert cfg.train.epochs == 3 and cfg.train.folds == [0, 2]
    assert cfg.dehaze.enabled is False and cfg.tune.start == pytest.approx(0.3)
    assert cfg.train.backbone == "densenet121"


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml", "planet32.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.split.folds >= 2


def test_default_config_is_the_full_planet_run():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert (cfg.train.image_size, cfg.split.folds, cfg.train.backbone) == (256, 5, "densenet121")


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  epoks: 3\n", "unknown key 'train.epoks'"),
    ("trian:\n  epochs: 3\n", "unknown section 'trian'"),
    ("train:\n  epochs: three\n", "train.epochs: expected an integer"),
    ("train:\n  folds: 0.5\n", "train.folds: expected a list"),
    ("dehaze:\n  enabled: maybe\n", "dehaze.enabled: expected true/false"),
    ("dehaze:\n  method: magic\n", "dehaze.method must be one of"),
    ("split:\n  folds: 1\n", "split.folds must be at least 2"),
    ("train: [1, 2]\n", "section 'train' must be a mapping"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train:\n  epochs: [\n", "not valid YAML"),
])
def test_bad_config_is_one_line_naming_key_and_file(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs", "expected section.key=value"),
    ("epochs=3", "expected section.key=value"),
    ("train.nope=1", "unknown key 'train.nope'"),
    ("predict.tta=3", "predict.tta must be one of"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_cli_reports_config_error_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("split:\n  foldz: 3\n")
    result = CliRunner().invoke(main, ["split", "--config", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "split.foldz" in result.output and "Traceback" not in result.output


def test_help_lists_every_stage():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for stage in ("synth", "dehaze", "split", "train", "tune", "predict", "evaluate", "demo"):
        assert f"  {stage} " in result.output
    commands = result.output.split("Commands:")[1]
    assert "..." not in commands  # one whole line per stage, not a truncated sentence


def test_cli_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys, amazonmine.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_reports_a_read_only_disk_in_one_line(tmp_path, monkeypatch):
    import errno

    import amazonmine.split

    target = tmp_path / "run" / ".config.123.tmp.yaml"

    def refused(cfg):
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(amazonmine.split, "run_split", refused)
    result = CliRunner().invoke(main, ["split", "--set", f"run.dir={tmp_path / 'run'}"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {target}: Read-only file system"


def test_demo_help_names_its_own_default_config():
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "demo.yaml" in " ".join(result.output.split())
