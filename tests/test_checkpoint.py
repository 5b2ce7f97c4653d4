"`medrecipes.checkpoint`: the one owner of the checkpoint scheme (kinds, required keys, reading, where settings are)."
import warnings
from pathlib import Path
import numpy as np, pytest, torch
from medrecipes.core import save_checkpoint, load_checkpoint
from medrecipes.checkpoint import (CHECKPOINT_KEYS, CheckpointError, checkpoint_kind, read_checkpoint, find_key,
                                   classifier_input_size, sar_model_config, sar_patch)


def _sar_ckpt(path, **over):
    from medrecipes.models.sar import sar_model
    from medrecipes.data.sar import SarPreprocess
    torch.manual_seed(0)
    m = sar_model('baseline', latent_channels=4, base_channels=4)
    ck = dict(model_state_dict=m.state_dict(), model_config=m.config, patch=32,
              preprocessing_params=SarPreprocess('db', clip=(-30., 10.)).checkpoint_params(), rd_lambda=0.5)
    return m, save_checkpoint(path, **{**ck, **over})


def _clf_ckpt(path, **over):
    from medrecipes.classify import create_classifier
    torch.manual_seed(0)
    m = create_classifier('resnet10t', 3, pretrained=False)
    ck = dict(model_state_dict=m.state_dict(), arch='resnet10t', class_names=['a', 'b', 'c'], model_kwargs={},
              normalization=dict(size=32, mean=[0.5] * 3, std=[0.25] * 3), config={'data': {'size': 32}})
    return m, save_checkpoint(path, **{**ck, **over})


def test_one_table_of_required_keys():
    assert CHECKPOINT_KEYS == {'classifier': ('model_state_dict', 'arch', 'class_names', 'normalization'),
                               'sar': ('model_state_dict', 'model_config', 'preprocessing_params')}


def test_kind_of_each_recipe_checkpoint(tmp_path):
    _, s = _sar_ckpt(tmp_path/'sar.pt')
    _, c = _clf_ckpt(tmp_path/'clf.pt')
    assert checkpoint_kind(s) == 'sar' and checkpoint_kind(str(c)) == 'classifier'
    assert checkpoint_kind(load_checkpoint(s)) == 'sar' and checkpoint_kind(load_checkpoint(c)) == 'classifier'
    ck = read_checkpoint(c)
    assert read_checkpoint(ck, 'classifier') is ck                           # a loaded one is checked, not copied


def test_sar_load_gives_model_preprocess_and_patch(tmp_path):
    from medrecipes.models.sar import load_sar_model, SarAutoencoder
    from medrecipes.data.sar import SarPreprocess
    m, f = _sar_ckpt(tmp_path/'sar.pt')
    model, pre, patch = load_sar_model(f)
    assert isinstance(model, SarAutoencoder) and not model.training and patch == 32
    assert pre == SarPreprocess('db', clip=(-30., 10.)) and model.config == m.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m.state_dict().values()))
    # the same from the loaded dict, and a checkpoint before quantisation (no quant_bits) gets a float latent
    cfg = {k: v for k, v in m.config.items() if k != 'quant_bits'}
    m2, f2 = _sar_ckpt(tmp_path/'old.pt', model_config=cfg, patch=None, config={'data': {'patch': 48}})
    model2, _, patch2 = load_sar_model(load_checkpoint(f2))
    assert model2.quant_bits is None and patch2 == 48                       # the patch found in the config
    # the codec reads a checkpoint path through the same loader (and its rd_lambda)
    from medrecipes.codec import _model_and_pre
    from medrecipes.models.sar import sar_model
    m3 = sar_model('baseline', latent_channels=4, base_channels=4, quant_bits=8)
    _, f3 = _sar_ckpt(tmp_path/'q.pt', model_state_dict=m3.state_dict(), model_config=m3.config)
    model3, pre3, lmbda = _model_and_pre(f3)
    assert model3.quant_bits == 8 and pre3.fitted and lmbda == 0.5


def test_classifier_load_gives_model_and_checkpoint(tmp_path):
    from medrecipes.classify import load_classifier
    m, f = _clf_ckpt(tmp_path/'clf.pt')
    model, ck = load_classifier(f)
    assert not model.training and ck['class_names'] == ['a', 'b', 'c'] and classifier_input_size(ck) == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.allclose(model(x), m.eval()(x))
    assert load_classifier(ck)[1] is ck


def test_a_missing_key_names_the_key_and_the_file(tmp_path):
    from medrecipes.classify import load_classifier
    from medrecipes.models.sar import load_sar_model
    _, f = _sar_ckpt(tmp_path/'nopre.pt', preprocessing_params=None)   # None counts as missing
    with pytest.raises(CheckpointError, match=r"nopre\.pt is not a SAR checkpoint .*: it has no 'preprocessing_params'"): load_sar_model(f)
    with pytest.raises(ValueError, match=r"nopre\.pt is not a SAR checkpoint"): checkpoint_kind(f)   # a ValueError too
    _, c = _clf_ckpt(tmp_path/'nonorm.pt', normalization=None)
    with pytest.raises(KeyError, match=r"nonorm\.pt is not a classifier checkpoint .*: it has no 'normalization'"): load_classifier(c)
    # a checkpoint of the other kind says what it is
    _, s = _sar_ckpt(tmp_path/'sar.pt')
    with pytest.raises(CheckpointError, match=r"sar\.pt is not a classifier checkpoint.*no 'arch', 'class_names', 'normalization' \(it is a SAR checkpoint\)"):
        load_classifier(s)
    # weights that do not fit the model the checkpoint describes
    ck = load_checkpoint(_clf_ckpt(tmp_path/'ok.pt')[1])
    save_checkpoint(tmp_path/'wrong.pt', **{**ck, 'class_names': ['a', 'b']})
    with pytest.raises(ValueError, match=r"wrong\.pt: the weights do not fit arch='resnet10t'"): load_classifier(tmp_path/'wrong.pt')
    save_checkpoint(tmp_path/'noarch.pt', **{**ck, 'arch': 'no_such_net'})
    with pytest.raises(ValueError, match=r"noarch\.pt: cannot build arch='no_such_net'"): load_classifier(tmp_path/'noarch.pt')


def test_a_foreign_file_gets_a_clear_error(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path/'weights.pt')     # a bare state dict: loads, but no checkpoint
    with pytest.raises(ValueError, match=r"weights\.pt is neither a classifier checkpoint \(keys model_state_dict, arch, class_names, "
                                         r"normalization\) nor a SAR checkpoint \(keys model_state_dict, model_config, "
                                         r"preprocessing_params\); it has the keys weight, bias"):
        checkpoint_kind(tmp_path/'weights.pt')
    save_checkpoint(tmp_path/'many.pt', **{f'k{i}': i for i in range(20)})
    with pytest.raises(ValueError, match=r"k7, \.\.\. \(20 keys in all\)"): read_checkpoint(tmp_path/'many.pt')
    torch.save(torch.zeros(3), tmp_path/'tensor.pt')
    with pytest.raises(ValueError, match=r"tensor\.pt does not hold a checkpoint dict \(got Tensor\)"): read_checkpoint(tmp_path/'tensor.pt')
    (tmp_path/'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=r"cannot load checkpoint .*junk\.pt"): checkpoint_kind(tmp_path/'junk.pt')
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt does not exist"): read_checkpoint(tmp_path/'nothere.pt', 'sar')
    with pytest.raises(ValueError, match=r"kind must be one of 'classifier', 'sar' or None, got 'onnx'"): read_checkpoint({}, 'onnx')


def test_find_key_and_where_settings_are():
    cfg = {'model': {'arch': 'resnet18', 'size': None}, 'data': {'size': 24}, 'cam_layer': 'body'}
    assert find_key(cfg, 'size') == 24 and find_key(cfg, 'cam_layer') == 'body' and find_key(cfg, 'nothing') is None
    assert find_key({'size': 3, 'a': {'size': 4}}, 'size') == 3                # the top level first
    assert find_key(None, 'size') is None and find_key([{'size': 1}], 'size') is None
    assert classifier_input_size({'config': {}, 'normalization': {'size': np.int64(40)}}) == 40
    assert sar_patch({'patch': 64, 'config': {'patch': 32}}) == 64 and sar_patch({}) is None
    assert sar_model_config({'model_config': {'variant': 'residual'}}) == {'quant_bits': None, 'variant': 'residual'}
    with pytest.raises(ValueError, match=r"r\.pt: model_config must be a dict"): sar_model_config({'model_config': [1]}, 'r.pt')


def test_export_names_that_moved_warn_and_name_the_new_path():
    import medrecipes.export as E
    import medrecipes.checkpoint as C
    for old, new, value in (('checkpoint_kind', 'medrecipes.checkpoint.checkpoint_kind', C.checkpoint_kind),
                            ('CLASSIFIER_KEYS', "medrecipes.checkpoint.CHECKPOINT_KEYS['classifier']", CHECKPOINT_KEYS['classifier']),
                            ('SAR_KEYS', "medrecipes.checkpoint.CHECKPOINT_KEYS['sar']", CHECKPOINT_KEYS['sar'])):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            assert getattr(E, old) == value
        assert [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)] == [f'medrecipes.export.{old} is deprecated: use {new}']
        assert old not in E.__all__
    assert not hasattr(E, '_find')
    with pytest.raises(AttributeError, match='no attribute'): E.nothing_here


def test_no_other_module_lists_the_required_keys():
    "The keys of each kind are written once, in medrecipes/checkpoint.py."
    root = Path(__file__).parents[1]/'medrecipes'
    for p in root.rglob('*.py'):
        if p.name in ('checkpoint.py', '_modidx.py'): continue
        src = p.read_text()
        assert "'model_state_dict', 'arch'" not in src and "'model_state_dict', 'model_config'" not in src, p
