"""Only a workaround: everything else about the package is in pyproject.toml.

setuptools' editable installs skip `[tool.setuptools.data-files]` (its `editable_wheel` asks the distribution for
`has_data`, a method it does not have), so `pip install -e .` would not install the project's Jupyter kernel
(`jupyter/kernels/oilwater-jax`). This runs `install_data` for editable wheels as regular wheels do."""
from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel


class editable_wheel_with_data(editable_wheel):
    def _run_install(self, category: str):
        if category == "data" and self.distribution.has_data_files(): self.run_command("install_data")
        else: super()._run_install(category)


setup(cmdclass={"editable_wheel": editable_wheel_with_data})
