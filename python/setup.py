"""Builds asyppo._native with CMake (the repository's top-level CMakeLists.txt with
ASYPPO_BUILD_PYTHON=ON) and packages it with python/asyppo/*.py.

    /usr/bin/python3 -m pip install --no-build-isolation --no-deps ./python

No network: CMake, a C++20 compiler, Eigen 3.4 and pybind11's CMake package (Debian:
cmake g++ libeigen3-dev pybind11-dev python3-dev) must be installed. CMAKE_BUILD_PARALLEL_LEVEL
sets the build jobs (default 1).
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        cfg = [
            "cmake", "-S", ROOT, "-B", build_dir,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DASYPPO_BUILD_PYTHON=ON",
            "-DASYPPO_BUILD_TESTS=OFF",
            "-DASYPPO_BUILD_EXAMPLES=OFF",
            "-DASYPPO_BUILD_BENCHMARKS=OFF",
            "-DASYPPO_INSTALL=OFF",
            "-DASYPPO_PYTHON_EXECUTABLE=" + sys.executable,
        ]
        if shutil.which("ninja"):
            cfg += ["-G", "Ninja"]
        subprocess.check_call(cfg)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "1")
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "asyppo_native", "-j", jobs])
        pkg = os.path.join(build_dir, "python", "asyppo")
        built = [f for f in os.listdir(pkg) if f.startswith("_native") and f.endswith((".so", ".pyd"))]
        if not built:
            raise RuntimeError("asyppo: the CMake build produced no _native extension in " + pkg)
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(pkg, built[0]), dest)


setup(
    packages=["asyppo"],
    package_dir={"asyppo": "asyppo"},
    ext_modules=[CMakeExtension("asyppo._native")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
