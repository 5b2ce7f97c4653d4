"""Check that the notebooks are numbered in dependency order: notebook N may use only the modules of notebooks before
it. `python docs/nb_order.py` lists every notebook that imports a module documented by a later one, and prints a
numbering that satisfies the rule (the current order wherever it already does). The kernel notebooks document
`medrecipes.kernels` (plain files, not exported), so they count as that package's notebooks. Exit status 1 when the
current order breaks the rule."""
import json, re, sys
from pathlib import Path

NBS = Path(__file__).resolve().parents[1]/'nbs'
_EXP = re.compile(r'^\s*#\|\s*default_exp\s+(\S+)', re.M)
_IMP = re.compile(r'\b(?:from|import)\s+medrecipes\.([\w.]+)')


def notebook_modules() -> dict:
    "`{notebook: (module it documents, modules it imports)}` for the numbered notebooks."
    res = {}
    for p in sorted(NBS.glob('[0-9]*.ipynb')):
        src = '\n'.join(''.join(c['source']) for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code')
        m = _EXP.search(src)
        mod = m.group(1) if m else ('kernels' if 'kernels' in p.stem else None)
        res[p.name] = (mod, set(_IMP.findall(src)))
    return res


def dependencies(mods:dict) -> dict:
    "`{notebook: notebooks whose modules it imports}`."
    owner = {m: nb for nb, (m, _) in mods.items() if m}
    def find(imp):
        parts = imp.split('.')
        for i in range(len(parts), 0, -1):
            if '.'.join(parts[:i]) in owner: return owner['.'.join(parts[:i])]
    deps = {}
    for nb, (mod, imps) in mods.items():
        found = {find(i) for i in imps} - {None, nb}
        if mod == 'kernels': found = {f for f in found if mods[f][0] != 'kernels'}
        elif any(i.startswith('kernels') for i in imps):   # every kernel notebook documents the kernels package
            found |= {k for k, (m, _) in mods.items() if m == 'kernels' and k != nb}
        deps[nb] = found
    return deps


def proposed_order(deps:dict) -> list:
    "A topological order of the notebooks, the current order kept wherever the rule allows."
    order, done = [], set()
    while len(order) < len(deps):
        nb = next(n for n in sorted(deps) if n not in done and deps[n] <= done)
        order.append(nb); done.add(nb)
    return order


def main():
    deps = dependencies(notebook_modules())
    bad = [(nb, sorted(d for d in ds if d > nb)) for nb, ds in sorted(deps.items()) if any(d > nb for d in ds)]
    for nb, later in bad: print(f'{nb} uses later notebooks: {", ".join(later)}')
    print('\nproposed numbering:')
    for i, nb in enumerate(proposed_order(deps)):
        print(f'  {nb:28} -> {i:02d}_{re.sub(r"^[0-9]+[a-z]?_", "", nb)}')
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main())
