"""The `medrecipes` command as a user runs it: a real process, on tiny generated data (forked from the tests' zygote,
tests/_procs.py; the installed command's own start-up is tested by tests/test_wheel.py)."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest
import _procs as procs

ROOT = Path(__file__).parents[1]


def _env():
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    env.pop('MEDRECIPES_CONFIG_DIR', None)
    return env


def medrecipes(*args, cwd=None, timeout=600):
    "Run `python -m medrecipes.cli ARGS` in `cwd`; the completed process."
    return procs.run(['-m', 'medrecipes.cli', *args], env=_env(), cwd=cwd, timeout=timeout)   # forked from the tests' zygote


def _tiny_folder(digits, out):
    "Overrides for a 1-epoch resnet10t run on 28 px digits, with the demo's root config."
    return ['--config-name', 'folder_demo', f'data.path={digits}', f'trainer.out_dir={out}', 'model.arch=resnet10t',
            'data.size=28', 'data.batch_size=16', 'trainer.max_epochs=1', 'trainer.precision=fp32', 'trainer.progress=false']


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp('digits')/'digits'
    r = medrecipes('synth', 'digits', d, '--n', 4, '--size', 28)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope='module')
def folder_run(digits, tmp_path_factory):
    "A finished 1-epoch image-folder run, trained by the command."
    out = tmp_path_factory.mktemp('run')/'folder'
    r = medrecipes('train', 'folder', *_tiny_folder(digits, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout[r.stdout.index('{'):])


def test_resume_keeps_the_override_after_it(digits, folder_run, tmp_path):
    "`--resume key=value` resumes the run's latest checkpoint and applies `key=value`; it is never taken for a checkpoint."
    out, first = folder_run
    r = medrecipes('train', 'xray', '--resume', f'data.path={tmp_path}', '--print-config')
    assert r.returncode == 0, r.stderr
    assert f'path: {tmp_path}' in r.stdout and 'resume: last' in r.stdout
    args = _tiny_folder(digits, out)
    r = medrecipes('train', 'folder', *args[:-1], '--resume', args[-1])   # trainer.progress=false right after --resume
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout[r.stdout.index('{'):])
    assert s['resumed_from'] == str(out/'checkpoints'/'latest.pt') and s['epochs_this_fit'] == 0
    assert s['epochs_run'] == first['epochs_run'] == 1
    # an explicit checkpoint path is still a checkpoint
    r = medrecipes('train', 'folder', *args, '--resume', tmp_path/'nope.pt')
    assert r.returncode == 2 and 'nope.pt' in r.stderr


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('medrecipes: error: '), r.stderr[-3000:]
    for w in words: assert w in lines[0], (w, lines[0])


def _main(capsys, *args):
    "`medrecipes.cli.main(args)` in this process, as a completed process (returncode, stdout, stderr)."
    from types import SimpleNamespace
    from medrecipes.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def test_user_errors_print_one_line_and_exit_2(digits, tmp_path, capsys):
    missing = tmp_path/'no_such_folder'
    _one_line_error(medrecipes('train', 'folder', *_tiny_folder(missing, tmp_path/'a')), str(missing))
    # config mistakes fail before anything is imported or trained: the same entry point, in this process
    _one_line_error(_main(capsys, 'train', 'folder', *_tiny_folder(digits, tmp_path/'b'), 'trainer.lr=fast'), 'trainer.lr must be a number', "'fast'")
    _one_line_error(_main(capsys, 'train', 'folder', *_tiny_folder(digits, tmp_path/'c'), 'trainer.epochs=3'),
                    "unknown config key 'trainer.epochs'", 'max_epochs')
    _one_line_error(_main(capsys, 'train', 'xray', 'model=resnet99'), "Could not find 'model/resnet99'", 'resnet50')
    _one_line_error(_main(capsys, 'train', 'sar', '--config-name', 'nope'), "no root config 'nope'", 'sar_demo')
    sar = tmp_path/'sar'
    assert medrecipes('synth', 'sar', sar, '--n', 2, '--n-valid', 1, '--size', 32).returncode == 0
    _one_line_error(medrecipes('train', 'sar', f'data.path={sar}', 'data.patch=64', f'trainer.out_dir={tmp_path/"s"}',
                               'trainer.max_epochs=1', 'trainer.progress=false'), 'smaller than the 64x64 patch')
    # --debug: the traceback instead
    r = medrecipes('train', 'folder', *_tiny_folder(missing, tmp_path/'d'), '--debug')
    assert r.returncode == 1 and 'Traceback (most recent call last)' in r.stderr and str(missing) in r.stderr


def test_diverged_run_is_a_user_error(digits, tmp_path):
    "A run the divergence guard stops (`medrecipes.callbacks.TrainingDiverged`) exits 2 with one line."
    import importlib
    if not hasattr(importlib.import_module('medrecipes.callbacks'), 'TrainingDiverged'): pytest.skip('medrecipes.callbacks has no divergence guard yet')
    r = medrecipes('train', 'folder', *_tiny_folder(digits, tmp_path/'run'), 'trainer.lr=1000', 'trainer.max_epochs=3')
    _one_line_error(r, 'epoch')


def test_export_onnx_prints_only_its_result(folder_run):
    "Library INFO logs (onnxscript, torch.onnx) stay quiet unless --verbose: the command prints its one result line."
    pytest.importorskip('onnxscript'); pytest.importorskip('onnxruntime')
    out, s = folder_run
    r = medrecipes('export-onnx', s['best_checkpoint'], '--out', out/'quiet.onnx')
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == [l for l in r.stdout.splitlines() if l.startswith('wrote ')] and len(r.stdout.splitlines()) == 1
    assert ' INFO ' not in r.stderr and not r.stderr.startswith('INFO'), r.stderr[:2000]


def test_print_config_of_every_demo():
    "The demos and the README's override keys resolve; the printed config is the full, checked one."
    for name, key in (('sar_demo', 'base_channels: 16'),):   # the wheel test trains every demo
        recipe = name.split('_')[0]
        r = medrecipes('train', recipe, '--config-name', name, '--print-config', 'trainer.max_epochs=3', 'trainer.lr=0.01',
                       'trainer.out_dir=runs/x', 'trainer.progress=false', 'data.batch_size=4', 'logging=wandb')
        assert r.returncode == 0, r.stderr
        for line in (key, 'max_epochs: 3', 'lr: 0.01', 'out_dir: runs/x', 'progress: false', 'batch_size: 4', 'wandb: true',
                     'precision:', 'accumulate: 1', 'clip_grad:'):
            assert line in r.stdout, (name, line, r.stdout)
    r = medrecipes('train-all', 'xray', 'data.split=center', 'model=resnet50', '--print-config')
    assert r.returncode == 0 and 'split: center' in r.stdout and 'arch: resnet50' in r.stdout, r.stderr


def test_progress_to_a_pipe_is_one_line_per_epoch(digits, tmp_path):
    "`medrecipes train ... > log`: a header and one line per epoch, not hundreds of redrawn bars (stdout is a pipe here)"
    r = procs.run(['-m', 'medrecipes.cli', 'train', 'folder', f'data.path={digits}', f'trainer.out_dir={tmp_path/"run"}',
                   'model.arch=resnet10t', 'data.size=32', 'trainer.max_epochs=2', 'data.batch_size=16', 'logging.tensorboard=false'],
                  env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if l.split() and l.split()[0] in ('epoch', '0', '1')]
    assert [l.split()[0] for l in lines] == ['epoch', '0', '1'], r.stdout[-2000:]
    assert 'train_loss' in lines[0] and 'valid_loss' in lines[0]
    assert not re.search(r'\d+\.\d+% \[\d+/\d+', r.stdout + r.stderr) and '\r' not in r.stdout    # no bar, no redraws
