import os, warnings
import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')  # pytest-xdist runs one worker per core


# Tests marked `trained` assert what a short training reached (accuracy, CAM mass, a loss that falls). A CPU's float
# path (AVX-512 or AVX2 kernels, oneDNN or not) changes such a run's trajectory, so each of them takes its seeds from
# `train_seed` and holds with a margin measured over several seeds (benchmarks/test_margins.py). To shake the path on
# one machine: `make test-trained SEED=3`, or `MEDRECIPES_TEST_SEED=3 ATEN_CPU_CAPABILITY=default pytest -m trained`.
def pytest_addoption(parser):
    parser.addoption('--train-seed', type=int, default=None,
                     help='seed of the tests marked `trained` (default: $MEDRECIPES_TEST_SEED, else 0)')


def _train_seed(config) -> int:
    opt = config.getoption('--train-seed')
    if opt is not None: return opt
    v = os.environ.get('MEDRECIPES_TEST_SEED', '0')
    try: return int(v)
    except ValueError: raise pytest.UsageError(f"MEDRECIPES_TEST_SEED must be an integer, got {v!r}") from None


@pytest.fixture(scope='session')
def train_seed(pytestconfig) -> int:
    "The seed of the tests marked `trained` (0 unless --train-seed or MEDRECIPES_TEST_SEED says otherwise)."
    return _train_seed(pytestconfig)


def pytest_report_header(config):
    return f"medrecipes: trained-model tests under seed {_train_seed(config)}"


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
