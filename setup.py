"""Builds the extension diffprobe._diffprobe with CMake (the project's own build: the static
library, pybind11 and Python's headers from Debian) and lets setuptools package it.

Environment: DIFFPROBE_CMAKE_ARGS (extra configure arguments), DIFFPROBE_BUILD_DIR (default
build/pip), CMAKE_BUILD_PARALLEL_LEVEL (default: the number of cores)."""
import os
import pathlib
import shlex
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = pathlib.Path(os.environ.get("DIFFPROBE_BUILD_DIR", ROOT / "build" / "pip")).resolve()
        target = pathlib.Path(self.get_ext_fullpath(ext.name)).resolve()
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DDIFFPROBE_BUILD_PYTHON=ON",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DDIFFPROBE_BUILD_TESTS=OFF", "-DDIFFPROBE_BUILD_BENCHMARKS=OFF",
            "-DDIFFPROBE_BUILD_EXAMPLES=OFF", "-DDIFFPROBE_BUILD_CLI=OFF",
            *shlex.split(os.environ.get("DIFFPROBE_CMAKE_ARGS", "")),
        ]
        subprocess.run(configure, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build), "--target", "diffprobe_python", "-j", jobs], check=True)
        built = build / "python" / "diffprobe" / ("_diffprobe" + sysconfig.get_config_var("EXT_SUFFIX"))
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(target))


setup(ext_modules=[CMakeExtension("diffprobe._diffprobe")], cmdclass={"build_ext": CMakeBuild})
