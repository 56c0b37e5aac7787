"""The build: which one runs, and setup.py's rules (mypyc or nothing, every .pyx, the fallback).

`make test-pure` and `make test-compiled` set BASCULE_EXPECT_BUILD, and the tests here check
that the modules the suite imported are that build: a stale compiled module, or a compiled
venv that quietly fell back to pure Python, fails the run. The setup.py hooks are tested on
throwaway trees in tmp_path (a tiny .pyx, a module with a type error, a C file that does not
compile); the project itself holds no such file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import pytest

from bascule import build_info

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = os.environ.get("BASCULE_EXPECT_BUILD", "")

# At least one module of every compiled package, plus what build_info itself names.
HOT_MODULES = sorted(
    {
        *build_info.COMPILED_MODULES,
        "bascule.l7.context",
        "bascule.l7.request",
        "bascule.balance.endpoint",
        "bascule.upstream.health",
        "bascule.balance.least",
        "bascule.codec.chunked",
        "bascule.l7.retry",
        "bascule.upstream.connect",
        "bascule.listen.listener",
        "bascule.l4.tcp",
        "bascule.codec.http1.head",
    }
)


def module_file(name: str) -> str:
    path = importlib.import_module(name).__file__
    assert path is not None
    return path


@pytest.fixture
def setup_module() -> ModuleType:
    """The project's setup.py as a module (its `setup()` call runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("bascule_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project tree in tmp_path, the working directory as pip would make it."""
    (tmp_path / "src" / "bascule").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASCULE_NO_EXTENSIONS", raising=False)
    yield tmp_path


# --- which build runs ------------------------------------------------------------------------


@pytest.mark.skipif(EXPECTED == "", reason="set by make test-pure / make test-compiled")
@pytest.mark.parametrize("name", HOT_MODULES)
def test_hot_modules_are_the_expected_build(name: str) -> None:
    path = module_file(name)
    if EXPECTED == "compiled":
        assert path.endswith(tuple(EXTENSION_SUFFIXES)), f"{name} is not compiled: {path}"
    else:
        assert EXPECTED == "pure", f"BASCULE_EXPECT_BUILD={EXPECTED!r}: pure or compiled"
        assert path.endswith(".py"), f"{name} is not the .py source: {path}"


@pytest.mark.skipif(EXPECTED == "", reason="set by make test-pure / make test-compiled")
def test_the_http1_codec_twin_is_the_expected_build() -> None:
    """The compiled run must exercise the Cython head codec (its tests skip without it)."""
    from bascule.codec import http1

    assert ("compiled" if EXPECTED == "compiled" else "pure") == http1.IMPLEMENTATION
    if EXPECTED == "compiled":
        assert module_file("bascule.codec.http1._chead").endswith(tuple(EXTENSION_SUFFIXES))


@pytest.mark.skipif(EXPECTED == "", reason="set by make test-pure / make test-compiled")
def test_version_names_the_expected_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bascule", "version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected = "compiled: mypyc" if EXPECTED == "compiled" else "pure Python"
    assert done.stdout == f"bascule 0.1.0 ({expected})\n"


def test_compiled_modules_are_all_or_none() -> None:
    compiled = {name: build_info.is_extension(name) for name in HOT_MODULES}
    assert len(set(compiled.values())) == 1, compiled
    assert build_info.is_compiled() is compiled["bascule.l7.exchange"]


def test_pure_modules_are_the_sources_of_this_tree() -> None:
    """Outside the compiled venv, the .py files run are this checkout's, never a copy."""
    if build_info.is_compiled():
        assert Path(module_file("bascule.l7.exchange")).parent != ROOT / "src/bascule/l7"
    else:
        assert Path(module_file("bascule.l7.exchange")) == ROOT / "src/bascule/l7/exchange.py"


# --- setup.py --------------------------------------------------------------------------------


def test_mypyc_compiles_every_orchestration_module(setup_module: ModuleType) -> None:
    sources = set(setup_module.mypyc_sources(ROOT))
    expected = {
        str(path.relative_to(ROOT))
        for package in ("l7", "codec", "upstream", "balance", "observe", "listen", "l4")
        for path in (ROOT / "src/bascule" / package).rglob("*.py")
    }
    assert sources == expected
    assert {"src/bascule/balance/maglev.py", "src/bascule/observe/access_log.py"} <= sources
    pure = ("/config/", "/runtime/", "/packet/", "/testing/", "/control/", "/cli.py")
    assert not any(part in s for s in sources for part in pure)


def test_no_extensions_variable_forces_pure(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BASCULE_NO_EXTENSIONS", "1")
    assert setup_module.extensions(ROOT) == []
    assert "BASCULE_NO_EXTENSIONS is set" in capsys.readouterr().err


def test_every_pyx_is_cythonized_and_builds(setup_module: ModuleType, project_copy: Path) -> None:
    pyx = project_copy / "src/bascule/codec/deep/_probe.pyx"
    pyx.parent.mkdir(parents=True)
    pyx.write_text("def add(int a, int b):\n    return a + b\n")
    extensions = setup_module.cython_extensions(project_copy)
    assert [e.name for e in extensions] == ["bascule.codec.deep._probe"]
    assert not list(pyx.parent.glob("*.c")), "the generated C must stay out of src/"
    out = project_copy / "out"
    build(setup_module, extensions, out)
    built = next(out.rglob("_probe*.so"))
    spec = importlib.util.spec_from_file_location("bascule.codec.deep._probe", built)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.add(2, 3) == 5


def test_a_type_error_falls_back_to_pure(
    setup_module: ModuleType, project_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = project_copy / "src/bascule/l7/broken.py"
    module.parent.mkdir(parents=True)
    module.write_text('count: int = "three"\n')
    assert setup_module.extensions(project_copy) == []
    err = capsys.readouterr()
    assert "mypyc failed" in err.err and "building pure Python" in err.err


def test_a_failing_compiler_installs_no_extension(
    setup_module: ModuleType, project_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from setuptools import Extension

    good = project_copy / "good.c"
    good.write_text(C_MODULE.replace("NAME", "good"))
    bad = project_copy / "bad.c"
    bad.write_text("this is not C;\n")
    extensions = [Extension("good", [good.name]), Extension("bad", [bad.name])]
    out = project_copy / "out"
    build(setup_module, extensions, out)
    assert "compiling the extensions failed" in capsys.readouterr().err
    assert not [p for p in out.rglob("*") if p.suffix == ".so"], "a half build was left behind"


C_MODULE = """
#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "NAME", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_NAME(void) { return PyModule_Create(&module); }
"""


def build(setup_module: ModuleType, extensions: list[object], out: Path) -> None:
    """Run setup.py's build_ext on these extensions, outputs in `out`."""
    from setuptools import Distribution

    class Fixed(setup_module.BuildExtOrPure):  # type: ignore[name-defined,misc]
        def finalize_options(self) -> None:
            self.distribution.ext_modules = extensions
            setup_module.build_ext.finalize_options(self)

    distribution = Distribution({"ext_modules": extensions, "cmdclass": {"build_ext": Fixed}})
    command = distribution.get_command_obj("build_ext")
    command.build_lib = str(out)  # type: ignore[attr-defined]
    command.build_temp = str(out / "temp")  # type: ignore[attr-defined]
    distribution.run_command("build_ext")
