"A learner exported by fastai_hier 0.1.0, before the package was reorganised, still loads and predicts the same"
import json, warnings
from pathlib import Path
import pytest, torch
from fastai.learner import load_learner
import fastai_hier.all # noqa: F401 (the package, as a user's script imports it)

FIXTURES = Path(__file__).parent/'fixtures'
IMAGES = Path(__file__).resolve().parents[2]/'shared'/'data'/'oxford-iiit-pet'/'images'

@pytest.mark.skipif(not IMAGES.is_dir(), reason=f"the PETS sample is not at {IMAGES}")
def test_old_export_loads_and_predicts_the_same():
    ref = json.loads((FIXTURES/'learner_v0.1.0.json').read_text())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning) # old names, which warn once
        learn = load_learner(FIXTURES/'learner_v0.1.0.pkl')
    assert learn.loss_func.decode == 'crm'
    assert type(learn.loss_func).__name__ == 'HierarchicalLoss'
    for r in ref['predictions']:
        dec,idx,probs = learn.predict(IMAGES/r['image'])
        assert (str(dec), int(idx)) == (r['decoded'], r['index']), r['image']
        torch.testing.assert_close(probs, torch.tensor(r['probs']), rtol=1e-4, atol=1e-6)
