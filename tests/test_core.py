import os, pickle, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from medrecipes.core import *


def test_checkpoint_roundtrip_weights_only(tmp_path):
    m = torch.nn.Conv2d(3, 4, 3)
    opt = torch.optim.Adam(m.parameters()); m(torch.randn(1, 3, 5, 5)).sum().backward(); opt.step()
    save_checkpoint(tmp_path/'a.pt', model=m.state_dict(), optimizer=opt.state_dict(), epoch=np.int64(3),
                    config={'lr': np.float32(0.5), 'path': Path('x')}, class_names=('a', 'b'))
    ck = torch.load(tmp_path/'a.pt', weights_only=True)
    assert ck['epoch'] == 3 and ck['config'] == {'lr': 0.5, 'path': 'x'} and ck['class_names'] == ['a', 'b']
    m2 = torch.nn.Conv2d(3, 4, 3); m2.load_state_dict(ck['model'])
    assert torch.equal(m2.weight, m.weight)
    assert [p.name for p in tmp_path.iterdir()] == ['a.pt']  # no temporary file left


class _Evil:
    def __reduce__(self): return (os.system, ('echo pwned',))


def test_load_checkpoint_refuses_pickled_code(tmp_path):
    torch.save({'model': {}, 'x': _Evil()}, tmp_path/'evil.pt')
    with pytest.raises(ValueError, match='evil.pt'):
        load_checkpoint(tmp_path/'evil.pt')
    with pytest.raises(TypeError, match='cannot store'):
        save_checkpoint(tmp_path/'b.pt', x=_Evil())
    assert not (tmp_path/'b.pt').exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    atomic_write_text(tmp_path/'f.txt', 'good')
    def fail(t):
        Path(t).write_text('partial'); raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): atomic_write(tmp_path/'f.txt', fail)
    assert (tmp_path/'f.txt').read_text() == 'good' and len(list(tmp_path.iterdir())) == 1


def test_config_layers_and_errors(tmp_path):
    d = {'a': 1, 'b': {'c': 'x', 'd': 2.0}, 'e': None}
    (tmp_path/'c.yaml').write_text('a: 5\nb:\n  c: y\n')
    cfg = load_config(d, tmp_path/'c.yaml', ['b.d=1e-3', 'e=[1, 2]'], a=7)
    assert cfg == {'a': 7, 'b': {'c': 'y', 'd': 1e-3}, 'e': [1, 2]}
    (tmp_path/'bad.yaml').write_text('b:\n  typo: 1\n')
    with pytest.raises(KeyError, match=r"bad.yaml: unknown config key 'b.typo'"): load_config(d, tmp_path/'bad.yaml')
    with pytest.raises(FileNotFoundError, match='nope.yaml'): load_config(d, tmp_path/'nope.yaml')
    with pytest.raises(ValueError, match="'a5'"): load_config(d, overrides=['a5'])


def test_repo_configs_are_valid():
    "Every root config in medrecipes/configs/ composes, and the recipe accepts what it composes to."
    from medrecipes.config import compose_config, flatten_config, default_config_dir
    from medrecipes.xray import xray_config
    from medrecipes.sar import sar_config
    from medrecipes.folder import folder_config
    roots = sorted(p.stem for p in default_config_dir().glob('*.yaml'))
    assert {'xray', 'xray_demo', 'sar', 'sar_demo', 'folder', 'folder_demo'} <= set(roots)
    for name in roots:
        cfg = compose_config(name)
        if name.startswith('xray'): assert xray_config(**flatten_config(cfg))['arch'] == 'efficientnet_b0'
        elif name.startswith('sar'): assert sar_config(**flatten_config(cfg))['variant'] == 'attention'
        else: assert folder_config(cfg)['model']['arch'] == 'resnet18'


def test_cpp_extension_built():
    "`pip install -e .` builds the C++ extension with OpenMP on this kind of machine."
    from medrecipes import _cpu
    assert _cpu.has_openmp() and _cpu.max_threads() >= 1


def test_notebooks_and_library_in_sync(tmp_path):
    "Exporting the notebooks reproduces medrecipes/ exactly."
    import shutil
    root = Path(__file__).parents[1]
    shutil.copytree(root/'nbs', tmp_path/'nbs'); shutil.copy(root/'pyproject.toml', tmp_path)
    for init in (root/'medrecipes').rglob('__init__.py'):  # package inits are hand-written
        dest = tmp_path/init.relative_to(root); dest.parent.mkdir(parents=True, exist_ok=True); shutil.copy(init, dest)
    subprocess.run([str(Path(sys.executable).parent/'nbdev-export')], cwd=tmp_path, check=True, capture_output=True)
    exported = {p.relative_to(tmp_path/'medrecipes') for p in (tmp_path/'medrecipes').rglob('*.py') if p.name != '__init__.py'}
    for rel in sorted(exported):
        assert (root/'medrecipes'/rel).read_text() == (tmp_path/'medrecipes'/rel).read_text(), f'medrecipes/{rel} differs from its notebook: run nbdev-export'
    # package inits and the kernels (medrecipes/kernels/, documented and tested by nbs/0[45]_kernels.*) are plain files
    ours = {p.relative_to(root/'medrecipes') for p in (root/'medrecipes').rglob('*.py')
            if p.name != '__init__.py' and 'kernels' not in p.relative_to(root/'medrecipes').parts}
    assert ours - exported == set(), f'modules with no notebook: {ours - exported}'


def test_to_json_writes_strict_json():
    "Metrics with NaN (an absent class's F1, an empty reliability bin) become null: strict JSON that any reader parses."
    import json
    o = {'f1': np.float64('nan'), 'bins': [1.5, float('inf'), -float('inf')], 'n': np.int64(3), 'path': Path('a'), 'ok': True}
    s = to_json(o)
    strict = lambda c: pytest.fail(f'{c} in the output')
    assert json.loads(s, parse_constant=strict) == {'f1': None, 'bins': [1.5, None, None], 'n': 3, 'path': 'a', 'ok': True}
    assert json.loads(to_json({'x': [0.25]}, indent=None)) == {'x': [0.25]} and '\n' not in to_json({'x': 1}, indent=None)
