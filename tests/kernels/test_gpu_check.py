"`benchmarks/gpu_check.py --dry-run`: the GPU machine's one prepared command runs end to end on CPU (Triton's interpreter, tiny shapes), so it cannot rot."
import csv, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    pytest.importorskip('triton'); pytest.importorskip('timm')
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    env.pop('MEDRECIPES_BACKEND', None)
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'gpu_check.py'), '--dry-run', '--out', str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = list(csv.DictReader(open(tmp_path/'gpu_check.csv')))
    got = {(row['bench'], row['impl']) for row in rows if row['note'] == '' and float(row['fwdbwd_ms']) > 0}
    for want in [('ssim', 'medrecipes triton'), ('ssim', 'reference torch.compile'), ('cbam', 'medrecipes triton'),
                 ('cbam', 'timm eager'), ('cbam', 'timm torch.compile'), ('sar_step', 'fused (triton)'), ('sar_step', 'reference')]:
        assert want in got, f'{want} missing from the dry run: {rows}'
    assert all(row['dry_run'] == 'True' for row in rows)
    assert 'fwd+bwd ms' in r.stdout and 'every step ran' in r.stdout
