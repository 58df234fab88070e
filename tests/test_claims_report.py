("The Claims table (`results/claims/claims.md`, which `nbs/83_advice_study.md` includes) is what the committed CSVs of "
 "`results/claims/` give: `scripts/claims_report.py` writes it")
import re
import pandas as pd
import claims_report as cr # scripts/ is on the path (conftest.py)

def test_claims_and_details_are_regenerated_unchanged():
    paired = {ds: cr.paired_results(ds) for ds,*_ in cr.DATASETS}
    assert cr.claims_markdown(paired) == (cr.ROOT/'claims.md').read_text(), "run `python scripts/claims_report.py`"
    assert cr.details_markdown(paired) == (cr.ROOT/'details.md').read_text(), "run `python scripts/claims_report.py`"

def test_every_row_has_a_verdict():
    rows = [l for l in (cr.ROOT/'claims.md').read_text().splitlines() if l.startswith('| ')][1:]
    assert len(rows) == sum(len(c['configs']) for c in cr.CLAIMS)   # one per claim and configuration
    for r in rows:
        cells = [c.strip() for c in r.strip('|').split('|')]
        assert re.fullmatch(r"(supported|not supported|a tie)( \(.+\))?(; .+)?", cells[7]), cells[7]

def test_the_loss_row_pairs_runs_by_fold_and_seed():
    "The worse-loss cell of `ce T=8` on PETS, from sweep.csv by hand: the mean of the paired differences"
    runs = pd.read_csv(cr.ROOT/'pets'/'sweep.csv')
    d = runs[runs.config == 'ce T=8'].merge(runs[runs.config == 'ce'], on=['fold', 'seed'], suffixes=('', '_ce'))
    assert len(d) == 30
    diff = (d.valid_loss - d.valid_loss_ce).mean()
    row = [l for l in (cr.ROOT/'claims.md').read_text().splitlines()
           if l.startswith('| ″ | ″ | `ce T=8`') and 'loss +' in l][0]
    assert f"loss {diff:+.2f} [" in row
