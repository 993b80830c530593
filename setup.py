"""Package megamix and build its C++ index helpers (megamix._helpers) at install time."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "megamix._helpers",
        ["csrc/helpers.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
]

setup(
    name="megamix",
    version="0.1.0",
    description="Megatron-style GPT pretraining with online data mixing (Aioli and baselines)",
    packages=find_packages(include=["megamix", "megamix.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.10",
    zip_safe=False,
)
