"""Build bascule compiled (mypyc, and Cython for any .pyx), or pure Python when that fails.

Rules of this module:
- The metadata lives in pyproject.toml; this file only decides the extension modules.
- mypyc compiles the orchestration modules: everything under `bascule/l7`, `bascule/codec`,
  `bascule/upstream`, `bascule/balance` and `bascule/observe` (the access log). Every
  `bascule/**/*.pyx` is cythonized, whatever its name, so a new compiled codec needs no change
  here.
- The pure build always works: `BASCULE_NO_EXTENSIONS=1` asks for it; a mypyc type error, a
  missing Cython or a failing C compiler falls back to it with a warning on stderr. The .py
  files always ship, so a build without extensions is the pure twin, not a broken package.
- A failed build leaves no extension behind: a half-built set of .so files would mix compiled
  and pure modules in ways no test ran.
- An editable (in-place) install is always pure: a compiled module in src/ would shadow the
  .py file beside it, and an edit to that file would silently not run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
MYPYC_PACKAGES = (
    "bascule/l7",
    "bascule/codec",
    "bascule/upstream",
    "bascule/balance",
    "bascule/observe",
    "bascule/listen",
    "bascule/l4",
)


def warn(message: str, outcome: str = "building pure Python") -> None:
    print(f"bascule build: WARNING: {message}; {outcome}", file=sys.stderr)


def note(message: str) -> None:
    print(f"bascule build: {message}", file=sys.stderr)


def no_extensions() -> bool:
    return os.environ.get("BASCULE_NO_EXTENSIONS", "") not in ("", "0")


def mypyc_sources(root: Path) -> list[str]:
    """The .py files mypyc compiles, relative to the project root (mypyc wants them so)."""
    src = root / "src"
    files = [path for package in MYPYC_PACKAGES for path in (src / package).rglob("*.py")]
    return sorted(str(path.relative_to(root)) for path in files)


def pyx_sources(root: Path) -> list[Path]:
    return sorted((root / "src").glob("bascule/**/*.pyx"))


def mypyc_extensions(root: Path) -> list[Extension]:
    try:
        from mypyc.build import mypycify
    except ImportError as e:
        warn(f"mypyc is not installed ({e})")
        return []
    old_cwd = os.getcwd()
    # mypyc names modules after paths relative to the working directory, and reads the mypy
    # settings of pyproject.toml from there.
    os.chdir(root)
    try:
        extensions: list[Extension] = mypycify(
            mypyc_sources(root), opt_level="3", target_dir="build/mypyc", group_name="bascule"
        )
        return extensions
    except SystemExit as e:  # mypyc reports type errors by exiting
        warn(f"mypyc failed ({e.code})")
        return []
    finally:
        os.chdir(old_cwd)


def cython_extensions(root: Path) -> list[Extension]:
    sources = pyx_sources(root)
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as e:
        warn(f"Cython is not installed ({e})", f"skipping {len(sources)} .pyx file(s)")
        return []
    # Relative source paths, or Cython writes the .c file beside the .pyx whatever build_dir says.
    modules = [
        Extension(
            ".".join(path.relative_to(root / "src").with_suffix("").parts),
            [os.path.relpath(path)],
        )
        for path in sources
    ]
    try:
        extensions: list[Extension] = cythonize(
            modules,
            compiler_directives={"language_level": "3"},
            build_dir=os.path.relpath(root / "build" / "cython"),  # src/ holds sources only
            quiet=True,
        )
        return extensions
    except Exception as e:  # Cython raises CompileError and plain exceptions alike
        warn(f"Cython failed ({e})", "skipping the .pyx files")
        return []


class BuildExtOrPure(build_ext):
    """Compiles at build time only, and installs no extension at all when any of them fails.

    The extensions are decided when build_ext starts, not when setup.py is read: pip reads
    setup.py three times (requirements, metadata, wheel), and mypyc type checks the whole
    package each time it is asked for extensions.
    """

    def finalize_options(self) -> None:
        if self.editable_mode or self.inplace:
            note("an editable install builds pure Python (compiled modules would shadow edits)")
            self.distribution.ext_modules = []
        else:
            self.distribution.ext_modules = extensions(ROOT)
        super().finalize_options()

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, a compiler error, a linker error
            warn(f"compiling the extensions failed ({e})")
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []


def extensions(root: Path) -> list[Extension]:
    if no_extensions():
        note("BASCULE_NO_EXTENSIONS is set: building pure Python")
        return []
    built = mypyc_extensions(root)
    if not built:
        return []  # Cython alone would make a build no test runs: mypyc or nothing
    return built + cython_extensions(root)


# A stand-in until build_ext decides: it makes setuptools run build_ext and tag the wheel for
# this platform and interpreter.
PLACEHOLDER = [] if no_extensions() else [Extension("bascule._extensions", sources=[])]

if __name__ == "__main__":  # setuptools runs it so; tests/unit/test_build.py imports it
    setup(ext_modules=PLACEHOLDER, cmdclass={"build_ext": BuildExtOrPure})
