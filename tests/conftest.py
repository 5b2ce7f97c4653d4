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
