"`HXELoss`, `SoftLabelsLoss` and CRM decoding inside real fastai learners, and exported"
import math
import pytest, torch
from fastai.vision.all import CutMix, Learner, MixUp, load_learner, nn, set_seed, untar_data, URLs
from fastai_hier.data.pets import pets_dls, pets_hierarchy
from fastai_hier.losses import HierarchicalLoss
from fastai_hier.decode import crm_decode
from fastai_hier.metrics import LevelAccuracy, MistakeSeverity
from fastai_hier.check import check_loss
from fastai_hier.losses import HXELoss, SoftLabelsLoss
from test_learner import _BF16Autocast

@pytest.fixture(scope='module')
def tiny_dls():
    "3 images per breed at 32 px"
    return pets_dls(untar_data(URLs.PETS)/'images', size=32, bs=16, per_breed=3)

@pytest.fixture(scope='module')
def tiny_hier(tiny_dls): return pets_hierarchy(tiny_dls.vocab)

def _learner(dls, hier, loss_func, cbs=None):
    "A linear model on the flattened images: fast, and the loss is what is under test"
    set_seed(0)
    return Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*32*32, 37)), loss_func=loss_func, cbs=cbs,
                   metrics=[LevelAccuracy(hier, 'species'), MistakeSeverity(hier)])

def _losses(hier, **kw): return [HXELoss(hier, 0.5, **kw), SoftLabelsLoss(hier, 10., **kw)]

@pytest.mark.parametrize('i', [0, 1])
@pytest.mark.parametrize('cb', [MixUp, CutMix, _BF16Autocast])
def test_trains_with_mixup_cutmix_bf16(tiny_dls, tiny_hier, i, cb):
    learn = _learner(tiny_dls, tiny_hier, _losses(tiny_hier)[i], cb())
    learn.fit(1, 1e-3)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])
    assert type(learn.loss_func) in (HXELoss, SoftLabelsLoss) and learn.loss_func.reduction == 'mean'
    if cb is _BF16Autocast: assert set(learn._bf16_autocast.loss_dtypes) == {torch.float32}

@pytest.mark.parametrize('make', [lambda h: HXELoss(h, decode='crm'), lambda h: SoftLabelsLoss(h, decode='crm'),
                                  lambda h: HierarchicalLoss(h, decode='crm')])
def test_crm_in_get_preds_and_predict(tiny_dls, tiny_hier, make):
    learn = _learner(tiny_dls, tiny_hier, make(tiny_hier))
    learn.fit(1, 1e-2)
    probs,targs,decoded = learn.get_preds(with_decoded=True)
    assert torch.equal(decoded, crm_decode(probs, tiny_hier))
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)))
    item = tiny_dls.valid_ds.items[0]
    label,idx,p = learn.predict(item)
    assert idx == crm_decode(p[None], tiny_hier)[0] and label == tiny_dls.vocab[idx]

def test_crm_is_not_the_default(tiny_hier):
    for lf in _losses(tiny_hier) + [HierarchicalLoss(tiny_hier)]:
        assert lf.decode == 'argmax'

def test_export_load_learner(tiny_dls, tiny_hier, tmp_path):
    ("The loss, its parameter and `decode='crm'` survive `export` and `load_learner` (`check_loss` loads the "
     "loss in a fresh process)")
    learn = _learner(tiny_dls, tiny_hier, HXELoss(tiny_hier, alpha=0.3, decode='crm'))
    learn.fit(1, 1e-2)
    learn.export(tmp_path/'export.pkl')
    loaded = load_learner(tmp_path/'export.pkl')
    assert (repr(loaded.loss_func) == repr(learn.loss_func)
            and repr(loaded.loss_func).endswith("alpha=0.3, decode='crm')"))
    item = tiny_dls.valid_ds.items[0]
    (_,idx,probs),(_,idx2,probs2) = learn.predict(item),loaded.predict(item)
    assert idx == idx2 == crm_decode(probs[None], tiny_hier)[0] and torch.allclose(probs, probs2)

@pytest.mark.parametrize('i', [0, 1])
def test_check_loss_passes(tiny_hier, i):
    check_loss(_losses(tiny_hier)[i], hier=tiny_hier, raise_on_fail=True)
