"""Build hooks: a wheel of Strongroom carries its PKCS#11 module.

The module is C (``pkcs11/``, libc and pthreads only), built with ``make -C pkcs11`` and
copied into the wheel as ``strongroom/lib/libstrongroom-pkcs11.so``, where
``strongroom pkcs11 module-path`` finds it once installed (:mod:`strongroom.pkcs11_module`).
That makes the wheel specific to the platform it was built on (``py3-none-linux_x86_64``:
any Python 3.11+, this CPU architecture). An editable install (``pip install -e``, as
``scripts/bootstrap`` does) uses the checkout's ``pkcs11/build/`` instead.

Building needs gcc, make and p11-kit's PKCS#11 header (Debian: ``apt-get install gcc make
libc6-dev libp11-kit-dev pkg-config``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODULE = "libstrongroom-pkcs11.so"


class BuildWithModule(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's pkcs11/build/ serves an editable install
        try:
            subprocess.run(["make", "-s", "-C", str(ROOT / "pkcs11")], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"building the PKCS#11 module failed ({exc}); it needs gcc, make and the p11-kit "
                             "header: apt-get install gcc make libc6-dev libp11-kit-dev pkg-config") from None
        target = Path(self.build_lib) / "strongroom" / "lib"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "pkcs11" / "build" / MODULE, target / MODULE)


class WithNativeLibrary(Distribution):
    """Not pure Python: the wheel is installed as platform-specific (platlib) and tagged so."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """The wheel holds a native library, not a Python extension: tag it for the platform only."""

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=WithNativeLibrary, cmdclass={"build_py": BuildWithModule, "bdist_wheel": PlatformWheel})
