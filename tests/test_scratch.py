"""The README's test command leaves nothing behind: `make test-nbs` and `make test-py` run in a private TMPDIR that is
removed when they end, passed or failed (a CI machine's disk is shared by every run on it)."""
import os, subprocess, sys, shutil
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

CASE = '''
import os, tempfile
from pathlib import Path
def test_writes_scratch(tmp_path):
    leaked = Path(tempfile.mkdtemp())                  # a folder nobody removes, as a notebook's or a subprocess's
    (leaked/'big.bin').write_bytes(bytes(1 << 20))
    (tmp_path/'ck.pt').write_bytes(bytes(1 << 20))
    Path(os.environ['SEEN']).write_text(os.environ['TMPDIR'] + '\\n' + str(leaked))
    assert os.environ['FAIL'] != '1'
'''

@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
@pytest.mark.parametrize('fail', [False, True])
def test_make_test_py_removes_its_temporary_files(tmp_path, fail):
    outer, case, seen = tmp_path/'tmp', tmp_path/'case', tmp_path/'seen.txt'
    outer.mkdir(); case.mkdir()
    (case/'test_case.py').write_text(CASE)
    env = {**os.environ, 'TMPDIR': str(outer), 'SEEN': str(seen), 'FAIL': '1' if fail else '0'}
    # `-o install`: the running environment is the installed one; nothing is reinstalled
    r = subprocess.run(['make', '-s', '-o', 'install', f'VENV={sys.prefix}', 'PYTEST_WORKERS=1',
                        f'PYTEST_ARGS=-p no:cacheprovider {case}', 'test-py'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (r.returncode != 0) == fail, r.stdout[-2000:] + r.stderr[-2000:]
    scratch, leaked = seen.read_text().splitlines()
    assert Path(scratch).parent == outer and Path(leaked).is_relative_to(scratch)   # the test ran inside the scratch
    assert list(outer.iterdir()) == []                                               # and it is gone
