"""The package as a user gets it: a wheel built from this repository, installed with pip into a new virtual
environment outside the repository, and its `medrecipes` command run from an empty folder for every recipe.

Dependencies come from the project's environment (a `.pth` file points the new environment at its site-packages, so
nothing is downloaded); medrecipes itself comes from the wheel only, which the test checks."""
import os, subprocess, sys, sysconfig, json
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    return r


def _reuse_built_extension(src:Path):
    """Seed the copy's setuptools build folder with the C++ extension `make install` compiled in place from these same
    sources, when it is newer than all of them: setuptools' `build_ext` then skips an up-to-date extension (as it does
    in any rebuild) instead of compiling it again (~40 s of this machine's CPU). The wheel is still built, packed and
    installed by pip; `_check_contents` checks that the installed package imports its extension."""
    so = sorted(ROOT.glob('medrecipes/_cpu*.so'))
    inputs = [ROOT/'setup.py', *ROOT.glob('csrc/*')]
    if len(so) != 1 or so[0].stat().st_mtime < max(p.stat().st_mtime for p in inputs): return   # stale or missing: compile
    lib = src/'build'/f'lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}'/'medrecipes'
    lib.mkdir(parents=True)
    (lib/so[0].name).write_bytes(so[0].read_bytes())   # written after the sources were copied: newer than all of them


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "A new virtual environment holding medrecipes from a freshly built wheel; returns (bin folder, env)."
    base = tmp_path_factory.mktemp('wheel')
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
    env['MPLBACKEND'] = 'Agg'
    # build from a copy of the tracked files, so the repository's own build/ and in-place extension play no part
    src = base/'src'; src.mkdir()
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout.decode().split('\0')
    for f in filter(None, files):
        if not (ROOT/f).is_file(): continue
        (src/f).parent.mkdir(parents=True, exist_ok=True); (src/f).write_bytes((ROOT/f).read_bytes())
    _reuse_built_extension(src)
    dist = base/'dist'
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q', '-w', dist, src], base, env)
    wheels = list(dist.glob('medrecipes-*.whl'))
    assert len(wheels) == 1, wheels
    venv = base/'venv'
    _run([sys.executable, '-m', 'venv', venv], base, env)
    py = venv/'bin'/'python'
    site = Path(_run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], base, env).stdout.strip())
    (site/'_project_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')   # torch, fastai, ... from the project env
    _run([py, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', wheels[0]], base, env)
    return venv/'bin', env


def _check_contents(bin_, env, tmp_path):
    "The package, its configs and its C++ kernels come from the new environment."
    code = ("import medrecipes, medrecipes.config as c, json; from medrecipes.kernels import ssim;"
            "import importlib.util as u;"
            "print(json.dumps({'file': medrecipes.__file__, 'configs': str(c.default_config_dir()),"
            "'cpp': u.find_spec('medrecipes._cpu') is not None}))")
    out = json.loads(_run([bin_/'python', '-c', code], tmp_path, env).stdout.strip().splitlines()[-1])
    venv = bin_.parent.resolve()
    assert Path(out['file']).resolve().is_relative_to(venv), out       # not the repository's copy
    assert Path(out['configs']).resolve().is_relative_to(venv), out
    assert {'xray.yaml', 'sar.yaml', 'folder.yaml'} <= {p.name for p in Path(out['configs']).glob('*.yaml')}
    assert out['cpp'], 'the C++ kernels were not built into the wheel'


def _train(bin_, env, work, recipe):
    exe = bin_/'medrecipes'
    if recipe == 'xray':
        _run([exe, 'synth', 'btxrd', 'data/b', '--n', '60', '--seed', '0'], work, env)
        over = ['data.path=data/b', 'data.size=32', 'data.batch_size=16', 'model.arch=resnet10t']
    elif recipe == 'sar':
        _run([exe, 'synth', 'sar', 'data/s', '--n', '4', '--n-valid', '1', '--size', '64', '--seed', '0'], work, env)
        over = ['data.path=data/s', 'data.patch=32', 'data.batch_size=8', 'model.base_channels=8']
    else:
        _run([exe, 'synth', 'digits', 'data/d', '--n', '3', '--seed', '0'], work, env)
        over = ['data.path=data/d', 'model.arch=resnet10t']
    r = _run([exe, 'train', recipe, '--config-name', f'{recipe}_demo', *over, 'trainer.max_epochs=1',
              f'trainer.out_dir=runs/r', 'trainer.progress=false'], work, env)
    run = work/'runs'/'r'
    ckpts = sorted(p.relative_to(run).as_posix() for p in run.rglob('checkpoints/*.pt'))
    assert any(c.endswith('checkpoints/best.pt') for c in ckpts) and any(c.endswith('checkpoints/latest.pt') for c in ckpts), (ckpts, r.stdout[-2000:])


def test_wheel_installed_outside_the_repository(installed, tmp_path):
    "`medrecipes synth` and `medrecipes train <recipe> --config-name <recipe>_demo` in a folder with no configs."
    bin_, env = installed
    _check_contents(bin_, env, tmp_path)
    for recipe in ('xray', 'sar', 'folder'):
        work = tmp_path/recipe; work.mkdir()
        _train(bin_, env, work, recipe)
