("Calibration at every level (`ECE(hier=..., level=...)`, `fit_temperature`) and the tree plot with the accuracy per "
 "node, in real fastai learners on the PETS sample")
import json, math, os, subprocess, sys
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import numpy as np, pytest, torch
from fastai.vision.all import (URLs, CrossEntropyLossFlat, DataLoaders, Learner, MixUp, load_learner, nn, noop,
                               rank_distrib, untar_data)
from fastcore.test import test_close as _close, test_fail as _fail
from fastai_hier.all import Hierarchy, HierarchicalInterpretation, HierarchicalLoss, pets_dls, pets_hierarchy
from fastai_hier.calibration import ECE, expected_calibration_error
import fastai_hier.tree_plot # `Hierarchy.plot`
from conftest import small_learner
from test_learner import _BF16Autocast

pytestmark = pytest.mark.slow

@pytest.fixture(scope='module')
def tiny():
    "3 images a breed at 32 px: an epoch in a fraction of a second"
    tiny = pets_dls(untar_data(URLs.PETS)/'images', size=32, bs=16, per_breed=3)
    return tiny,pets_hierarchy(tiny.vocab)

def _eces(hier): return [ECE(), ECE(hier=hier), ECE(hier=hier, level='species')]

def _fitted(dls, hier, **kwargs):
    "`small_learner` with the three `_eces` as its metrics, trained one epoch"
    learn = small_learner(dls, hier, **kwargs)
    learn.metrics = _eces(hier)
    learn.fit(1, 1e-3)
    return learn

def _check_eces(learn, hier, values):
    "`values`: the three `_eces` of `learn.validate()`, against the definition on `get_preds`"
    probs,targ = learn.get_preds()
    ece,fine,species = values
    assert fine == ece                                           # level 0 is the plain ECE, exactly
    _close(ece, expected_calibration_error(probs, targ), eps=1e-5)
    species_probs = torch.zeros(len(probs), 2).index_add_(1, hier.maps[1], probs.float())
    _close(species, expected_calibration_error(species_probs, hier.maps[1][targ]), eps=1e-5)
    _close(species, expected_calibration_error(probs, targ, hier=hier, level='species'), eps=1e-5)

def test_metric_names_and_values(tiny):
    dls,hier = tiny
    learn = _fitted(dls, hier)
    assert learn.recorder.metric_names[-4:-1] == ['ece', 'breed_ece', 'species_ece']
    _check_eces(learn, hier, learn.recorder.values[-1][-3:])
    _check_eces(learn, hier, learn.validate()[-3:])

def test_export_load_learner(tiny, tmp_path):
    "The metric and its hierarchy are pickled with the learner"
    dls,hier = tiny
    learn = _fitted(dls, hier)
    learn.export(tmp_path/'export.pkl')
    loaded = load_learner(tmp_path/'export.pkl')
    m = loaded.metrics[-1]
    assert (m.name, m.level, list(m.hier.vocab)) == ('species_ece', 1, list(dls.vocab))
    loaded.dls = dls
    _close(loaded.validate()[-3:], learn.validate()[-3:], eps=1e-6)

def test_mixup(tiny):
    "Under `MixUp` the training loss is MixUp's; the metric reaches the real loss's activation"
    dls,hier = tiny
    learn = _fitted(dls, hier, cbs=MixUp())
    _check_eces(learn, hier, learn.recorder.values[-1][-3:])

def test_bf16_predictions(tiny):
    "Half-precision predictions: the probabilities are summed in float32, and confident logits give finite values"
    dls,hier = tiny
    learn = _fitted(dls, hier, cbs=_BF16Autocast())
    assert set(learn._bf16_autocast.pred_dtypes) == {torch.bfloat16}
    vals = learn.recorder.values[-1][-3:]
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in vals), vals
    with torch.no_grad(): learn.model[-1][-1].weight.mul_(1e4)  # logits in the thousands
    vals = learn.validate()[-3:]
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in vals), vals

class _Learn:
    ("What `ECE.accumulate` reads of a learner, on rank 0 of 2: `to_detach` gathers like fastai's, the other "
     "rank's items appended")
    def __init__(self, loss_func, pred, targ, other):
        self.loss_func,self.pred,self.yb,self.other = loss_func,pred,(targ,),other
    def to_detach(self, b): return tuple(torch.cat([x.detach(), o]) for x,o in zip(b, self.other))

def test_distributed_gathers_items(tiny):
    "In distributed training the metric accumulates the gathered items, so its value is that of all the ranks' items"
    dls,hier = tiny
    lf = small_learner(dls, hier).loss_func
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, 37, generator=g)*3 for _ in range(4)]
    targs = [torch.randint(0, 37, (8,), generator=g) for _ in range(4)]
    m = ECE(hier=hier, level='species')
    m.reset()
    for b in (0, 1): # rank 0's batches; `other` is what rank 1 has at the same batch
        m.accumulate(_Learn(lf, logits[b], targs[b], (lf.activation(logits[b+2]), targs[b+2])))
    _close(m.value, expected_calibration_error(torch.cat(logits).softmax(-1), torch.cat(targs), hier=hier,
                                               level='species'), eps=1e-6)

def _distributed_worker(out):
    ("One of 2 processes: `ECE` at each level on fixed predictions of 8 and 7 items, distributed, then on "
     "rank 0 in one process")
    from distributed_worker import DISTRIB, _leave_group # its import also lets `DistributedDL` broadcast on the CPU
    torch.set_num_threads(1)
    hier = Hierarchy.from_func(list('abcd'), lambda c: 'x' if c in 'ab' else 'y', names=('fine', 'coarse'))
    g = torch.Generator().manual_seed(0)
    items = list(zip(torch.randn(8, 4, generator=g)*2, torch.randint(0, 4, (8,), generator=g)))
    def _learner(items, level):
        dls = DataLoaders.from_dsets(items, items, bs=2, device='cpu', num_workers=0)
        model = nn.Linear(4, 4) # the identity: the predictions are the inputs
        with torch.no_grad(): model.weight.copy_(torch.eye(4)); model.bias.zero_()
        learn = Learner(dls, model, loss_func=HierarchicalLoss(hier), metrics=ECE(hier=hier, level=level))
        learn.remove_cb(learn.progress); learn.logger = noop
        return learn
    cases,res = dict(even=items, odd=items[:7]),{}
    for case,its in cases.items():
        for level in hier.names:
            learn = _learner(its, level)
            with learn.distrib_ctx(**DISTRIB): learn.fit(1, 0.) # no step: the identity stays
            res[f'{case} {level}'] = learn.recorder.values[-1][-1]
    _leave_group()
    if rank_distrib() == 0:
        res.update({f'{case} {level} single': _learner(its, level).validate()[-1] for case,its in cases.items()
                    for level in hier.names})
        # what the ranks get
        res.update({f'odd {level} padded': _learner(items[:7] + items[:1], level).validate()[-1]
                    for level in hier.names})
    (Path(out)/f'rank{rank_distrib()}.json').write_text(json.dumps(res))

def test_distributed(tmp_path):
    ("With fastai's `distrib_ctx` on 2 CPU processes (gloo), as in one process: 7 items too, which "
     "`DistributedDL` pads to 8")
    pytest.importorskip('accelerate')
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore',
               PYTHONPATH=os.pathsep.join(p for p in [str(root), os.environ.get('PYTHONPATH')] if p))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           __file__, str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert r.returncode == 0, r.stderr[-5000:]
    r0,r1 = (json.loads((tmp_path/f'rank{k}.json').read_text()) for k in (0, 1))
    for case in ('even', 'odd'):
        for level in ('fine', 'coarse'):
            assert (r0[f'{case} {level}'] == r1[f'{case} {level}']
                    == pytest.approx(r0[f'{case} {level} single'], rel=1e-6)), (case, level, r0)
    # so counting the padding would show
    assert all(r0[f'odd {l} single'] != pytest.approx(r0[f'odd {l} padded']) for l in ('fine', 'coarse'))

def test_fit_temperature_every_level(tiny):
    dls,hier = tiny
    learn = _fitted(dls, hier, cbs=MixUp())
    with torch.no_grad(): learn.model[-1][-1].weight.mul_(5)
    probs,targ = learn.get_preds()
    res = learn.fit_temperature()
    assert list(res.level_ece_before) == list(res.level_ece_after) == ['breed', 'species']
    assert (res.level_ece_before['breed'], res.level_ece_after['breed']) == (res.ece_before, res.ece_after)
    _close(res.level_ece_before['species'],
           expected_calibration_error(probs, targ, hier=hier, level='species'), eps=1e-5)
    _close(learn.validate()[-3:], [res.ece_after, res.ece_after, res.level_ece_after['species']], eps=1e-5)
    plain = small_learner(dls, hier, loss_func=CrossEntropyLossFlat())
    res = plain.fit_temperature()
    assert res.level_ece_before is None and res.level_ece_after is None and math.isfinite(res.ece_after)

def test_bad_input(tiny):
    dls,hier = tiny
    _fail(lambda: ECE(hier, 'species'), contains='`n_bins` is Hierarchy(')
    _fail(lambda: ECE(level='species'), contains='no hierarchy: pass the one')
    _fail(lambda: ECE(hier=hier, level='genus'), contains="Unknown level 'genus'")
    other = pets_hierarchy(list(dls.vocab)[::-1])
    learn = small_learner(dls, hier)
    learn.metrics = [ECE(hier=other, level='species')]
    _fail(lambda: learn.fit(1, 1e-3), contains='The metric species_ece orders its fine classes unlike `dls.vocab`')

def test_accuracy_per_node_plot(tiny, tmp_path):
    "`accuracy_per_node` of an exported and loaded learner, drawn on the tree"
    dls,hier = tiny
    learn = small_learner(dls, hier)
    learn.fit(1, 1e-3)
    learn.export(tmp_path/'export.pkl')
    loaded = load_learner(tmp_path/'export.pkl')
    loaded.dls = dls
    interp = HierarchicalInterpretation.from_learner(loaded)
    acc = interp.accuracy_per_node()
    for name,a in acc.items():
        pred,targ = interp.at_level(name)
        items = torch.bincount(targ, minlength=len(a))
        assert (a.isnan() == (items == 0)).all()
        _close((a.nan_to_num()*items).sum()/items.sum(), (pred == targ).float().mean(), eps=1e-6)
    for kind in ('icicle', 'sunburst'):
        ax = hier.plot(kind, values=acc, label='accuracy')
        assert len(ax.patches) == sum(hier.n_classes) and len(ax.figure.axes) == 2
        matplotlib.pyplot.close('all')

if __name__ == '__main__': _distributed_worker(sys.argv[1]) # as launched by `test_distributed`
