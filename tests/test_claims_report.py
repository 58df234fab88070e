"The README's Claims section is what the committed CSVs of `results/claims/` give: `scripts/claims_report.py` writes it"
import importlib.util, re
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

def _claims_report():
    spec = importlib.util.spec_from_file_location('claims_report', ROOT/'scripts'/'claims_report.py')
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m

def test_claims_and_details_are_regenerated_unchanged():
    cr = _claims_report()
    paired = {ds: cr.paired_results(ds) for ds,*_ in cr.DATASETS}
    assert cr.claims_markdown(paired) == (cr.ROOT/'claims.md').read_text(), "run `python scripts/claims_report.py`"
    assert cr.details_markdown(paired) == (cr.ROOT/'details.md').read_text(), "run `python scripts/claims_report.py`"

def test_every_row_has_a_verdict():
    rows = [l for l in (ROOT/'results'/'claims'/'claims.md').read_text().splitlines() if l.startswith('| ')][1:]
    assert len(rows) == sum(len(c['configs']) for c in _claims_report().CLAIMS)   # one per claim and configuration
    for r in rows:
        cells = [c.strip() for c in r.strip('|').split('|')]
        assert re.fullmatch(r"(supported|not supported|a tie)( \(.+\))?(; .+)?", cells[7]), cells[7]

def test_the_loss_row_pairs_runs_by_fold_and_seed():
    "The worse-loss cell of `ce T=8` on PETS, from sweep.csv by hand: the mean of the paired differences"
    runs = pd.read_csv(ROOT/'results'/'claims'/'pets'/'sweep.csv')
    d = runs[runs.config == 'ce T=8'].merge(runs[runs.config == 'ce'], on=['fold', 'seed'], suffixes=('', '_ce'))
    assert len(d) == 30
    diff = (d.valid_loss - d.valid_loss_ce).mean()
    row = [l for l in (ROOT/'results'/'claims'/'claims.md').read_text().splitlines()
           if l.startswith('| ″ | ″ | `ce T=8`') and 'loss +' in l][0]
    assert f"loss {diff:+.2f} [" in row
