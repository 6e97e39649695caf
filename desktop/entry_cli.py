"""Entry script of the frozen app: the ``musicgen-onnx`` console script, as PyInstaller needs a file."""

from musicgen_onnx.cli import main

if __name__ == "__main__":
    main()
