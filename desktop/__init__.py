"""Desktop packaging: freeze the ``musicgen-onnx`` CLI into a self-contained one-folder app.

A build tool, not part of the installed package (pyproject.toml does not list it): run it from the
repository root with ``python -m desktop.build`` in an environment that has the package installed
with the ``package`` extra (PyInstaller).
"""
