"""The `bascule` command's own behaviour, called in-process: flags, refusals, `check`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bascule import __version__
from bascule.cli import main
from bascule.config.demo import DEMO_YAML


@pytest.mark.parametrize("argv", [["--version"], ["-V"], ["version"]])
def test_version_flags_print_the_version(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    out = capsys.readouterr()
    assert out.out == f"bascule {__version__}\n"
    assert out.err == ""


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "command" in capsys.readouterr().err


def test_print_demo_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--print-demo"]) == 0
    assert capsys.readouterr().out == DEMO_YAML + "\n"


def test_print_demo_with_a_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the fix it ignored --print-demo and started serving the file.
    path = tmp_path / "b.yaml"
    path.write_text("workers: 1\n")
    with pytest.raises(SystemExit) as info:
        main(["run", "-c", str(path), "--print-demo"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--print-demo" in err and "-c" in err


def _check(tmp_path: Path, config: dict[str, object], capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "bascule.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["check", "-c", str(path)]) == 2
    return capsys.readouterr().err.replace(str(path), "bascule.yaml")


def _listener(name: str, address: str) -> dict[str, object]:
    return {"name": name, "address": address, "routes": [{"cluster": "c"}]}


CLUSTERS = [{"name": "c", "endpoints": [{"address": "127.0.0.1:9001"}]}]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {"listeners": [_listener("web", "127.0.0.300:8080")]},
            "bascule.yaml:3 listeners[0].address: '127.0.0.300' is not an IPv4 address "
            "(each of its four numbers is 0 to 255)",
            id="invalid-ip",
        ),
        pytest.param(
            {"listeners": [_listener("a", "127.0.0.1:8080"), _listener("b", "127.0.0.1:8080")]},
            "bascule.yaml:7 listeners[1].address: 127.0.0.1:8080 is already listener a's address",
            id="two-listeners",
        ),
        pytest.param(
            {"listeners": [_listener("a", "0.0.0.0:8080"), _listener("b", "127.0.0.1:8080")]},
            "bascule.yaml:7 listeners[1].address: 127.0.0.1:8080 is already listener a's address "
            "(0.0.0.0:8080 listens on every IPv4 address)",
            id="inside-a-wildcard",
        ),
        pytest.param(
            {
                "admin": {"address": "127.0.0.1:8080"},
                "listeners": [_listener("w", "127.0.0.1:8080")],
            },
            "bascule.yaml:2 admin.address: 127.0.0.1:8080 is already listener w's address",
            id="admin-on-a-listener",
        ),
        pytest.param(
            {
                "demo_backends": [{"name": "d", "address": "127.0.0.1:8080"}],
                "listeners": [_listener("w", "127.0.0.1:8080")],
            },
            "bascule.yaml:3 demo_backends[0].address: 127.0.0.1:8080 is already listener w's "
            "address",
            id="demo-backend-on-a-listener",
        ),
    ],
)
def test_check_refuses_what_run_would_fail_on(
    config: dict[str, object], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the fix, `check` said ok to each of these and `run` then failed to bind.
    assert _check(tmp_path, {**config, "clusters": CLUSTERS}, capsys) == expected + "\n"


def test_check_refuses_a_listener_on_a_service_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "listeners": [_listener("web", "198.18.0.100:80")],
        "clusters": CLUSTERS,
        "services": [{
            "name": "vip", "vip": "198.18.0.100", "port": 80, "mode": "nat",
            "interface": "eth0", "endpoints": [{"address": "198.18.0.11"}],
        }],
    }
    err = _check(tmp_path, config, capsys)
    assert err.startswith("bascule.yaml:3 listeners[0].address: 198.18.0.100:80 is service vip's")


def test_port_zero_listeners_do_not_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.yaml"
    config = {
        "listeners": [_listener("a", "127.0.0.1:0"), _listener("b", "127.0.0.1:0")],
        "clusters": CLUSTERS,
    }
    path.write_text(yaml.safe_dump(config))
    assert main(["check", "-c", str(path)]) == 0, capsys.readouterr().err


def test_check_refuses_an_unknown_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bascule.conf"
    path.write_text("workers: 1\n")
    assert main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}: unknown config file extension '.conf': "
        "name it .yaml, .yml, .toml or .json\n"
    )


def test_demo_yaml_names_its_backends() -> None:
    # The printed demo, saved as a file, must start its backends itself (see test_runtime).
    assert "demo_backends:" in DEMO_YAML
