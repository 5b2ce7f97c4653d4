"One config system: the dataclasses are the defaults of Python and of the YAML files; every form of config resolves the same."
from dataclasses import asdict, fields
from pathlib import Path
import pytest, yaml
from omegaconf import OmegaConf
from medrecipes.config import *
from medrecipes.core import save_config

RECIPES = ('xray', 'sar', 'folder')


def test_yaml_roots_and_python_defaults_agree():
    "Each recipe's root config composes to exactly its dataclass defaults; the *_DEFAULTS dicts are derived from them."
    from medrecipes.xray import XRAY_DEFAULTS
    from medrecipes.sar import SAR_DEFAULTS
    from medrecipes.folder import FOLDER_DEFAULTS
    for r in RECIPES: assert compose_config(r) == recipe_defaults(r) == asdict(RECIPE_CONFIGS[r]()), r
    assert XRAY_DEFAULTS == recipe_defaults('xray') and SAR_DEFAULTS == recipe_defaults('sar')   # one nested shape for every recipe
    assert FOLDER_DEFAULTS == recipe_defaults('folder')
    x = XRAY_DEFAULTS
    assert (x['trainer']['max_epochs'], x['data']['batch_size'], x['data']['path']) == (30, 32, 'data/BTXRD')
    with pytest.warns(DeprecationWarning, match=r"config\['epochs'\] \(a flat key\) is deprecated.*trainer.max_epochs"):
        assert (x['epochs'], x['bs'], x['data_path']) == (30, 32, 'data/BTXRD')   # the flat keys, for one release
    # the keys that used to disagree between folder.py and configs/: one value now, the dataclass's
    f = compose_config('folder')
    assert (f['model']['pretrained'], f['data']['size'], f['data']['path'], f['data']['num_workers']) == (False, 224, 'data/images', 0)
    # no group file restates a default: every value in a non-demo group file differs from the dataclass (or is a choice's arch)
    d = default_config_dir()
    for p in d.glob('*/*.yaml'):
        if 'demo' in p.stem: continue
        vals = yaml.safe_load(p.read_text()) or {}
        assert set(vals) <= {'arch', 'drop_rate', 'variant', 'csv', 'tensorboard', 'wandb'}, (p, vals)


def test_demo_roots_resolve_for_their_recipe():
    for r in RECIPES:
        c = resolve_config(r, f'{r}_demo')
        assert c['trainer']['out_dir'] == f'runs/{r}_demo' and set(c) == set(CONFIG_GROUPS)
    assert resolve_config('sar', 'sar_demo')['model']['base_channels'] == 16


def test_every_form_of_config_resolves_the_same(tmp_path):
    "Dataclass, OmegaConf, nested dict, flat keywords, a root YAML file, a saved config.yaml and overrides agree."
    want = recipe_defaults('xray')
    want['data'].update(path=str(tmp_path), split='center', size=32)
    want['trainer'].update(max_epochs=1)
    dc = XrayConfig(); dc.data.path, dc.data.split, dc.data.size, dc.trainer.max_epochs = str(tmp_path), 'center', 32, 1
    forms = [resolve_config('xray', dc), resolve_config('xray', OmegaConf.structured(dc)),
             resolve_config('xray', {'data': {'path': tmp_path, 'split': 'center', 'size': 32}, 'trainer': {'max_epochs': 1}}),
             resolve_config('xray', data_path=tmp_path, split='center', epochs=1, size=32),   # today's flat keywords
             resolve_config('xray', default_config_dir()/'xray.yaml', [f'data.path={tmp_path}', 'split=center', 'epochs=1', 'data.size=32']),
             resolve_config('xray', None, [f'data_path={tmp_path}', 'data.split=center', 'trainer.max_epochs=1', 'size=32'])]
    save_config(flatten_config(forms[0]), tmp_path/'flat.yaml'); save_config(forms[0], tmp_path/'nested.yaml')
    forms += [resolve_config('xray', tmp_path/'flat.yaml'), resolve_config('xray', tmp_path/'nested.yaml')]
    for i, f in enumerate(forms): assert f == want, i


def test_recipes_take_a_root_yaml_with_defaults(tmp_path):
    "`train_xray('configs/xray.yaml')` used to fail with \"unknown config key 'defaults'\"; every recipe takes its root files now."
    from medrecipes.xray import xray_config, train_xray
    from medrecipes.sar import sar_config
    from medrecipes.folder import folder_config
    d = default_config_dir()
    assert xray_config(d/'xray_demo.yaml', ['model=resnet50'])['model']['arch'] == 'resnet50'
    assert sar_config(d/'sar.yaml', ['model=sar_residual'])['model']['variant'] == 'residual'
    assert folder_config(d/'folder_demo.yaml', ['logging=csv'])['logging']['tensorboard'] is False
    missing = tmp_path/'no_btxrd'
    with pytest.raises(FileNotFoundError, match=str(missing)): train_xray(d/'xray.yaml', [f'data.path={missing}'])


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    (tmp_path/'data').mkdir(); (tmp_path/'data'/'mine.yaml').write_text('defaults:\n  - btxrd\n  - _self_\nsplits: center\n')
    with pytest.raises(ValueError, match=r"unknown config key 'data.splits' in data/mine.yaml .*known keys: path, meta, img_dir, split"):
        resolve_config('xray', 'xray', ['data=mine'], config_dir=tmp_path)
    (tmp_path/'run.yaml').write_text('trainer:\n  max_epoch: 3\n')
    with pytest.raises(KeyError, match=r"run.yaml: unknown config key 'trainer.max_epoch'; known keys: max_epochs"):
        resolve_config('sar', tmp_path/'run.yaml')
    with pytest.raises(KeyError, match=r"unknown config key 'epoch'.*\(sections\).*epochs"): resolve_config('folder', epoch=3)
    with pytest.raises(ValueError, match=r"data.batch_size must be an int, not 'many'"): resolve_config('sar', overrides=['data.batch_size=many'])
    with pytest.raises(ValueError, match=r"Could not find 'model/sar_unet'"): resolve_config('sar', overrides=['model=sar_unet'])
    with pytest.raises(ValueError, match=r"unknown config key 'model.arch'"): resolve_config('sar', overrides=['model=resnet50'])
    with pytest.raises(TypeError, match='config must be'): resolve_config('xray', 3)


def test_a_config_folder_of_ones_own(tmp_path):
    "`--config-dir` / `config_dir=`: a root of one's own extends the package's, and its groups sit beside the package's."
    (tmp_path/'model').mkdir()
    (tmp_path/'model'/'tiny.yaml').write_text('arch: resnet10t\ndrop_rate: 0.1\n')
    (tmp_path/'site.yaml').write_text('defaults:\n  - folder\n  - override model: tiny\n  - _self_\ndata:\n  path: /data/site\n')
    c = resolve_config('folder', 'site', ['data.size=64'], config_dir=tmp_path)
    assert (c['model']['arch'], c['model']['drop_rate'], c['data']['path'], c['data']['size']) == ('resnet10t', 0.1, '/data/site', 64)
    assert resolve_config('folder', 'folder', ['model=tiny'], config_dir=tmp_path)['model']['arch'] == 'resnet10t'
    assert resolve_config('folder', {'data': {'size': 32}}, ['model=tiny'], config_dir=tmp_path)['model']['arch'] == 'resnet10t'


def test_training_keys_of_every_recipe():
    "Mixed precision, accumulation, clipping and W&B are keys of every recipe, with defaults that keep today's behaviour."
    today = {'xray': ('fp32', 1, None), 'sar': ('fp32', 1, 1.0), 'folder': ('auto', 1, 1.0)}
    for r in RECIPES:
        t = recipe_defaults(r)['trainer']
        assert (t['precision'], t['accumulate'], t['clip_grad']) == today[r], r
        assert recipe_defaults(r)['logging']['wandb'] is False
        c = resolve_config(r, overrides=['trainer.precision=bf16', 'trainer.accumulate=4', 'trainer.clip_grad=0.5', 'logging=wandb'])
        assert (c['trainer']['precision'], c['trainer']['accumulate'], c['trainer']['clip_grad'], c['logging']['wandb']) == ('bf16', 4, 0.5, True)
    # the README's override keys, in every recipe
    for r in RECIPES:
        c = resolve_config(r, overrides=['data.path=p', 'trainer.max_epochs=2', 'trainer.lr=3e-4', 'trainer.out_dir=o',
                                         'trainer.progress=false', 'data.batch_size=4'])
        assert (c['data']['path'], c['trainer']['max_epochs'], c['trainer']['lr'], c['trainer']['out_dir'], c['trainer']['progress'],
                c['data']['batch_size']) == ('p', 2, 3e-4, 'o', False, 4)


def test_schemas_are_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore
    register_configs()
    repo = ConfigStore.instance().repo
    for r in RECIPES:
        assert f'{r}_schema.yaml' in repo
        assert {f'{g}.yaml' for g in CONFIG_GROUPS} <= set(repo['schema'][r])


def test_a_folder_named_like_a_root_config_is_not_a_config_file(tmp_path, monkeypatch):
    "`medrecipes train sar` run in a folder that holds a data folder called `sar` still means the root config `sar`."
    from medrecipes.config import resolve_config, recipe_defaults
    monkeypatch.chdir(tmp_path); (tmp_path/'sar').mkdir()
    assert resolve_config('sar', 'sar')['data'] == recipe_defaults('sar')['data']


# --- command-line overrides: the text as typed for a string, the number a person means for a number (issue 26.5)

@pytest.mark.parametrize('override, key, want', [
    ('trainer.out_dir=010', 'trainer.out_dir', '010'),          # YAML 1.1: the octal 8
    ('trainer.out_dir=2024_01', 'trainer.out_dir', '2024_01'),  # YAML 1.1: 202401
    ('trainer.out_dir=12:30', 'trainer.out_dir', '12:30'),      # YAML 1.1: the sexagesimal 750
    ('data.path=0755', 'data.path', '0755'),                    # YAML 1.1: the octal 493
    ('trainer.seed=010', 'trainer.seed', 10),                   # YAML 1.1: the octal 8
    ('out_dir=010', 'trainer.out_dir', '010'), ('data_path=0755', 'data.path', '0755'),    # the flat keys alike
    ("trainer.out_dir='010'", 'trainer.out_dir', '010'), ('trainer.out_dir="a b"', 'trainer.out_dir', 'a b'),   # quoted: unquoted
    ('trainer.out_dir=1e3', 'trainer.out_dir', '1e3'), ('trainer.out_dir=true', 'trainer.out_dir', 'true'),
    ('data.meta=0755', 'data.meta', '0755'), ('data.meta=null', 'data.meta', None),          # Optional[str]: null is None
    ('trainer.max_epochs=+007', 'trainer.max_epochs', 7), ('data.cache_size=0640', 'data.cache_size', 640),
    ('trainer.lr=3e-4', 'trainer.lr', 3e-4), ('trainer.lr=010', 'trainer.lr', 10.0), ('trainer.lr=.5', 'trainer.lr', .5),
    ('trainer.clip_grad=null', 'trainer.clip_grad', None), ('trainer.progress=false', 'trainer.progress', False),
])
def test_overrides_are_read_as_a_person_means_them(override, key, want):
    g, k = key.split('.')
    got = resolve_config('xray', overrides=[override])[g][k]
    assert got == want and type(got) is type(want), (override, got)


@pytest.mark.parametrize('override, match', [
    ('trainer.seed=2024_01', r"trainer.seed must be an int, not '2024_01'"),
    ('trainer.seed=12:30', r"trainer.seed must be an int, not '12:30'"),
    ('trainer.seed=0x10', r"trainer.seed must be an int, not '0x10'"),
    ('trainer.seed=1e3', r"trainer.seed must be an int, not '1e3'"),
    ('trainer.lr=12:30', r"trainer.lr must be a number, not '12:30'"),
    ('trainer.lr=1_000', r"trainer.lr must be a number, not '1_000'"),
])
def test_overrides_a_number_cannot_mean_are_errors(override, match):
    with pytest.raises(ValueError, match=match): resolve_config('xray', overrides=[override])


def test_values_are_range_checked_once_in_config():
    "Every recipe's values are checked by `resolve_config` (types, then the ranges each section declares), the message naming the dotted key."
    for recipe, over, msg in [('folder', 'trainer.max_epochs=0', r'trainer.max_epochs must be an int >= 1, not 0'),
                              ('xray', 'epochs=0', r'trainer.max_epochs must be an int >= 1, not 0'),   # a flat key: the nested name
                              ('sar', 'trainer.lr=0', r'trainer.lr must be a number > 0, not 0.0'),
                              ('xray', 'trainer.precision=fp8', r"trainer.precision must be one of \('auto', 'fp32', 'bf16', 'fp16'\)"),
                              ('xray', 'split=nowhere.csv', r"data.split must be one of \('stratified', 'center'\) or an existing split CSV"),
                              ('sar', 'model.entropy=gaussian', r"model.entropy must be one of \('factorized', 'hyperprior'\) or null"),
                              ('sar', 'model.linear_skip=haar', r"model.linear_skip must be false, 'dct', or 'box'"),
                              ('sar', 'trainer.fit_prior=maybe', r"trainer.fit_prior must be true or false, not 'maybe'"),
                              ('folder', 'data.batch_size=0', r'data.batch_size must be an int >= 1, not 0'),
                              ('folder', 'logging.wandb_mode=cloud', r"logging.wandb_mode must be one of \('offline', 'online', 'disabled'\)")]:
        with pytest.raises(ValueError, match=msg): resolve_config(recipe, overrides=[over])
    with pytest.raises(ValueError, match=r'trainer.accumulate must be an int >= 1'): resolve_config('xray', accumulate=0)
    assert check_config_value('folder', 'trainer.clip_grad', 0, 'clip_grad') == 0.
    with pytest.raises(ValueError, match=r'^clip_grad must be a gradient norm'): check_config_value('folder', 'trainer.clip_grad', -1., 'clip_grad')
    with pytest.raises(KeyError, match='unknown config key'): check_config_value('folder', 'trainer.nope', 1)


def test_allowed_values_agree_with_the_layers_that_use_them():
    "config.py states the allowed values of keys whose users sit in later modules; they must be the same."
    from medrecipes.callbacks import PRECISIONS, WANDB_MODES
    from medrecipes.data.xray import SPLIT_KINDS
    from medrecipes.models.sar import SAR_VARIANTS, ENTROPY_MODELS
    assert PRECISION.says == f"one of {PRECISIONS}"
    assert LoggingConfig.checks['wandb_mode'].says == f"one of {WANDB_MODES}"
    assert XRAY_SPLIT.says.startswith(f"one of {SPLIT_KINDS}")
    assert SarModel.checks['variant'].says == f"one of {SAR_VARIANTS}"
    assert SarModel.checks['entropy'].says == f"one of {ENTROPY_MODELS} or null"
    from medrecipes.models.sar import SKIP_TRANSFORMS
    assert all(f"'{t}'" in SarModel.checks['linear_skip'].says for t in SKIP_TRANSFORMS)
    for v, want in (('dct', 'dct'), ('box', 'box'), ('true', True), ('false', False)):
        assert resolve_config('sar', overrides=[f'model.linear_skip={v}'])['model']['linear_skip'] == want
    assert 'checks' not in {f.name for f in fields(XrayTrainer)}   # a class variable, not a config key
    with pytest.raises(KeyError, match="unknown config key 'trainer.checks'"): resolve_config('xray', {'trainer': {'checks': {}}})


def test_recipes_read_the_nested_config_and_flat_keys_still_map():
    "The recipes' configs are nested; flat keyword arguments map onto it in one place; flat reads warn for one release."
    import warnings
    from medrecipes.xray import xray_config
    from medrecipes.sar import sar_config
    from medrecipes.folder import folder_config
    x, s, f = xray_config(epochs=3, bs=4, data_path='d', out_dir='o'), sar_config(epochs=3, bs=4), folder_config(epochs=3, bs=4)
    assert (x['trainer']['max_epochs'], x['data']['batch_size'], x['data']['path'], x['trainer']['out_dir']) == (3, 4, 'd', 'o')
    for c in (x, s, f): assert set(c) == set(CONFIG_GROUPS) and (c['trainer']['max_epochs'], c['data']['batch_size']) == (3, 4)
    assert s['model']['quant_bits'] == 8   # null: 8 bits without an entropy model
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); assert (s['epochs'], s.get('compare_seeds'), s.get('data_path')) == (3, None, 'data/sar')
    assert len(w) == 3 and all(issubclass(i.category, DeprecationWarning) for i in w)
    # flatten_config stays public, and a flat config resolves to the same nested one
    assert resolve_config('xray', flatten_config(x)) == x and unflatten_config(flatten_config(x), x) == x
