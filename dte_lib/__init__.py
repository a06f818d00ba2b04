"""dte_lib — the small shared library behind the Deep Tree Echo lab's notebooks.

Each notebook in ``notebooks/`` is a teaching layer over one or two modules here; each module's docstring names
the notebook that explains it and the command that runs it. Imports are lazy: ``import dte_lib`` is instant, and
heavy libraries (torch, transformers, sentence-transformers) load only in the modules that need them.
"""
__version__ = "0.1.0"
