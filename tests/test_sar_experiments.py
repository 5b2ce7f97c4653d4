"""The experiments moved out of the SAR recipe (`medrecipes.sar`) into `medrecipes.sar_experiments`: their old import
path keeps working for one release, each use warning with a `DeprecationWarning` that names the new path; the recipe
module does not import the experiments module (the experiments import the recipe)."""
import subprocess, sys, warnings
import pytest

MOVED = ['compare_sar', 'compare_seeds', 'rd_sweep', 'plot_rd', 'rd_curves', 'plot_rd_curves', 'sar_targets',
         'ENL_RATIO_TARGET', 'ATTENTION_GAIN_TARGET_DB', 'SEED_FIGURES', '_md_table', '_rd_scores']


@pytest.mark.parametrize('name', MOVED)
def test_old_path_warns_and_gives_the_moved_object(name):
    import medrecipes.sar as recipe, medrecipes.sar_experiments as experiments
    with pytest.warns(DeprecationWarning, match=rf'medrecipes\.sar\.{name} is deprecated: it moved to medrecipes\.sar_experiments\.{name}$'):
        old = getattr(recipe, name)
    assert old is getattr(experiments, name)
    assert name not in recipe.__all__ and name not in vars(recipe)      # served by `__getattr__`, not a copy in the recipe
    if not name.startswith('_'): assert name in experiments.__all__


@pytest.mark.parametrize('name', MOVED)
def test_from_import_of_the_old_path_warns(name):
    ns = {}
    with pytest.warns(DeprecationWarning, match=rf'medrecipes\.sar_experiments\.{name}$'):
        exec(f'from medrecipes.sar import {name}', ns)
    import medrecipes.sar_experiments as experiments
    assert ns[name] is getattr(experiments, name)


def test_recipe_imports_without_the_experiments_and_star_import_is_quiet():
    "`import medrecipes.sar` and `from medrecipes.sar import *` (the README's line) load no experiments and warn nothing."
    code = ("import sys, warnings\n"
            "import medrecipes.sar\n"
            "assert 'medrecipes.sar_experiments' not in sys.modules, 'medrecipes.sar imported the experiments'\n"
            "warnings.simplefilter('error')\n"
            "exec('from medrecipes.sar import *', {})\n"
            "assert 'medrecipes.sar_experiments' not in sys.modules, 'the star import loaded the experiments'\n"
            "import medrecipes.sar_experiments\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-3000:]


def test_unknown_name_is_still_an_attribute_error():
    import medrecipes.sar as recipe
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(AttributeError, match="module 'medrecipes.sar' has no attribute 'compare_sars'"): recipe.compare_sars
        assert not hasattr(recipe, 'not_a_name')
