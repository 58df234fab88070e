"""Execute notebooks in place with a real Jupyter kernel, so that they are committed as Jupyter shows them: fastai's
training tables as HTML tables, plots, `show_doc`. Skips the cells `nbdev-test` skips: `#| eval: false`, and those
flagged (`#| gpu`, `#| fashion`) unless the flag is given.

    FASTAI_HOME=... python scripts/run_notebooks.py nbs/50_pets.ipynb [more.ipynb ...] [--flags fashion]

Run it with `FASTAI_HOME` pointing at the PETS sample (`python scripts/pets_sample.py DIR`), as the tests do.
"""
import argparse
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbdev.config import get_config
from nbdev.test import nb_test_cells

def cells_to_run(fn:Path, flags:set) -> set:
    "The ids of the cells `nbdev-test --flags ...` runs (nbdev's own choice)"
    skip = set(get_config().tst_flags.split()) - flags
    return {c.id for c in nb_test_cells(fn, skip_flags=list(skip))}

class SkippingClient(NotebookClient):
    "Leaves the skipped cells as they are, without output"
    def __init__(self, nb, run, **kw): super().__init__(nb, **kw); self.run = run
    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type == 'code' and cell.id not in self.run:
            cell.outputs, cell.execution_count = [], None
            return cell
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('notebooks', nargs='+', type=Path)
    p.add_argument('--flags', default='', help='space-separated flags whose cells run, e.g. "fashion"')
    args = p.parse_args()
    for fn in args.notebooks:
        nb = nbformat.read(fn, as_version=4)
        SkippingClient(nb, cells_to_run(fn, set(args.flags.split())), timeout=1800, kernel_name='python3',
                       resources={'metadata': {'path': str(fn.parent)}}).execute()
        nbformat.write(nb, fn)
        print(f"executed {fn}", flush=True)
