"""Helpers shared by the test folders: closeness measures (``tolerances``) and the CLI runner (``cli``).

``tests/`` is on ``sys.path`` because of the root ``tests/conftest.py`` (pytest's rootdir conftest
insertion), so tests import them as ``from helpers.tolerances import ...``.
"""
