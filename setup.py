"""Build the Cython kernels in ``timbral/_core`` with -O3 and, when the compiler
supports it, OpenMP.

The OpenMP probe compiles and links a tiny program (as scikit-learn's old
``openmp_helpers`` did) instead of guessing from the platform name. A compiler
without OpenMP fails the build with an actionable message unless
``TIMBRAL_NO_OPENMP=1`` asks for a serial build on purpose.
"""

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

CORE = Path("timbral") / "_core"
OPENMP_FLAG = "-fopenmp"
OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """
)
# Extensions built for a wider instruction set as well as the portable baseline; the
# package imports them only on a CPU that has the instructions (timbral/_core/__init__.py).
SIMD_VARIANTS = {"_nmf_avx2": ["-mavx2", "-mfma"], "_topk_half": ["-mavx2", "-mfma", "-mf16c"]}
SIMD_PROBE = "int main(void) { return 0; }\n"


def compiler_accepts(compiler, source: str, flags: list[str]) -> bool:
    """Compile and link ``source`` with ``flags`` using the build's own compiler."""
    tmp = tempfile.mkdtemp()
    try:
        path = Path(tmp) / "probe.c"
        path.write_text(source)
        objects = compiler.compile([str(path)], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objects, str(Path(tmp) / "probe"), extra_postargs=flags)
        return True
    except Exception:  # any compile or link failure means "not supported"
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        serial = os.environ.get("TIMBRAL_NO_OPENMP") == "1"
        with_openmp = not serial and compiler_accepts(self.compiler, OPENMP_PROBE, [OPENMP_FLAG])
        if not serial and not with_openmp:
            sys.exit(
                "timbral: the C compiler cannot build OpenMP code "
                f"({self.compiler.compiler_type} rejected {OPENMP_FLAG}). Install an OpenMP "
                "runtime (e.g. libgomp with gcc, libomp with clang), or set TIMBRAL_NO_OPENMP=1 "
                "to build single-threaded kernels."
            )
        self.extensions = [
            ext for ext in self.extensions
            if ext.name.rsplit(".", 1)[-1] not in SIMD_VARIANTS
            or compiler_accepts(self.compiler, SIMD_PROBE, SIMD_VARIANTS[ext.name.rsplit(".", 1)[-1]])
        ]
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3", *SIMD_VARIANTS.get(ext.name.rsplit(".", 1)[-1], []),
                                      *ext.extra_compile_args]
            if with_openmp:
                ext.extra_compile_args.append(OPENMP_FLAG)
                ext.extra_link_args.append(OPENMP_FLAG)
            ext.define_macros.append(("TIMBRAL_OPENMP", "1" if with_openmp else "0"))
        super().build_extensions()


extensions = [
    Extension(
        f"timbral._core.{pyx.stem}",
        [str(pyx)],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted(CORE.glob("*.pyx"))
]

setup(
    # The service's code lives in the top-level server/ folder but installs as
    # timbral.server, so the wheel adds exactly one top-level name: timbral.
    packages=[*find_packages(include=["timbral", "timbral.*"]), "timbral.server"],
    package_dir={"timbral.server": "server"},
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
            "binding": True,
        },
    ),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
