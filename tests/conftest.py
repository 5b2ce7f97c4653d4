import os, warnings
import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')  # pytest-xdist runs one worker per core


@pytest.fixture(scope='session')
def btxrd(tmp_path_factory):
    "A generated BTXRD-format data set (120 images), shared by the tests of one worker."
    from medrecipes.synth import make_btxrd
    return make_btxrd(tmp_path_factory.mktemp('btxrd'), n=120, seed=0)


@pytest.fixture
def btxrd_copy(btxrd, tmp_path):
    "A private copy of the generated set, for tests that damage it."
    import shutil
    return shutil.copytree(btxrd, tmp_path/'btxrd')


def _runs_tests(config):
    "False in pytest-xdist's controller, which only hands tests to its workers."
    return hasattr(config, 'workerinput') or not getattr(config.option, 'numprocesses', None)


def pytest_collection_finish(session):
    # the zygote that forks the tests' training processes (tests/_procs.py), started before any test runs
    import sys
    if '_procs' in sys.modules and _runs_tests(session.config): sys.modules['_procs'].start()


def pytest_unconfigure(config):
    import sys
    if '_procs' in sys.modules: sys.modules['_procs'].stop()
