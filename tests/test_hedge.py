("Hedged predictions (`fastai_hier.hedge`) inside real fastai learners on the PETS sample: export and `load_learner`, "
 "`MixUp`, half precision, a ragged tree, distributed metrics")
import json, pickle, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from fastai.vision.all import (URLs, Categorize, DataLoaders, Learner, MixUp, load_learner, nn,
                               rank_distrib, resnet18, set_seed, tensor, untar_data, vision_learner)
from fastcore.test import test_close as _close
from fastai_hier.all import Hierarchy, HierarchicalLoss, pets_dls, pets_hierarchy
from fastai_hier.all import (HedgedAccuracy, HedgedCoverage, TensorNode, climb, hedge_decode, hedge_threshold,
                               risk_coverage)

HERE = Path(__file__).resolve().parent

@pytest.fixture(scope='module')
def tiny():
    "3 images a breed at 32 px: an epoch in a fraction of a second, for the mechanics"
    dls = pets_dls(untar_data(URLs.PETS)/'images', size=32, bs=16, per_breed=3)
    return dls,pets_hierarchy(dls.vocab)

def _learner(dls, hier, **kwargs):
    set_seed(0)
    return vision_learner(dls, resnet18, pretrained=False,
                          loss_func=HierarchicalLoss(hier, weights={'breed': 0.5, 'species': 0.5}), **kwargs)

def _reachable(learn, hier):
    "A target accuracy halfway between the fine predictions' and the most hedging can give, on the validation set"
    probs,targ = learn.get_preds()
    def acc(t):
        level,group = climb(probs, hier, t)
        return (hier.ancestors(targ).gather(0, level[None])[0] == group).double().mean().item()
    return (acc(0.) + acc(1.))/2

@pytest.fixture(scope='module')
def hedged(tiny):
    "A learner trained one epoch, its threshold fitted"
    dls,hier = tiny
    learn = _learner(dls, hier)
    learn.fit(1, 1e-3)
    target = _reachable(learn, hier)
    return learn,learn.fit_hedge(target),target

def test_fit_hedge(hedged):
    learn,fit,target = hedged
    assert fit.accuracy >= target and 0 <= fit.coverage <= 1 and 1 <= fit.mean_depth <= 2, fit
    lf = learn.loss_func
    assert (lf.decode, lf.threshold) == ('argmax', fit.threshold)   # the threshold is kept, the decode not changed
    with learn.hedged(): probs,targ,nodes = learn.get_preds(with_decoded=True)
    assert isinstance(nodes, TensorNode)
    level,group = climb(probs, lf.func.hier, fit.threshold)
    assert torch.equal(nodes, lf.func.hier.node_index(level, group))
    assert fit.coverage == pytest.approx((level == 0).double().mean().item())
    assert fit.mean_depth == pytest.approx((2 - level).double().mean().item())   # PETS: a breed is 2 deep, a species 1

def test_predict_names_the_node(hedged):
    ("`predict` goes through `dls.decode_batch`, whose `Categorize` must name a group, never read its "
     "index out of `dls.vocab`")
    learn,fit,_ = hedged
    hier,vocab = learn.loss_func.func.hier,learn.dls.vocab
    with learn.hedged():
        _,_,nodes = learn.get_preds(with_decoded=True)
        for i in range(len(learn.dls.valid_ds)):
            name,node,_ = learn.predict(learn.dls.valid_ds.items[i])
            assert node == nodes[i]
            assert name == (vocab[node] if node < len(vocab) else ['cat', 'dog'][node - len(vocab)]), (i, name, node)
    # at threshold 1 it says only species
    with learn.hedged(1.): assert learn.predict(learn.dls.valid_ds.items[0])[0] in ('cat', 'dog')
    assert (learn.loss_func.decode, learn.loss_func.threshold) == ('argmax', fit.threshold)

def test_export_load_learner_fresh_process(hedged, tmp_path):
    learn,fit,_ = hedged
    img = learn.dls.valid_ds.items[0]
    # a model that should hedge once deployed: exported with its loss decoding by hedging
    with learn.hedged():
        learn.export(tmp_path/'export.pkl')
        name,node,_ = learn.predict(img)
    # a fresh interpreter that never imports fastai_hier itself: unpickling the loss must bring the
    # threshold and the decoding
    code = textwrap.dedent(f"""
        from fastai.vision.all import *
        learn = load_learner({str(tmp_path/'export.pkl')!r})
        lf = learn.loss_func
        name,node,_ = learn.predict({str(img)!r})   # predict draws a progress bar on stdout: mark our lines
        print('LOSS', repr(lf.decode), repr(lf.threshold))
        print('PRED', repr(str(name)), int(node))
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    lines = dict(l.split(' ', 1) for l in out.splitlines() if l.startswith(('LOSS ', 'PRED ')))
    assert lines['LOSS'] == f"'hedge' {fit.threshold!r}"
    assert lines['PRED'] == f"{str(name)!r} {int(node)}"

def test_mixup(tiny):
    ("`MixUp` puts its own loss in place during training: the metrics and `fit_hedge` reach the real "
     "one, and its temperature")
    dls,hier = tiny
    learn = _learner(dls, hier, cbs=MixUp(), metrics=[HedgedAccuracy(hier, 0.6), HedgedCoverage(hier, 0.6)])
    learn.loss_func.temperature = 2.
    learn.fit(1, 1e-3)
    vals = list(learn.recorder.values[-1][2:4]) # before `get_preds`, which changes the recorder's last row
    probs,targ = learn.get_preds()
    _close(probs, torch.softmax(learn.get_preds(act=lambda x: x)[0].float()/2, -1), eps=1e-5)
    level,group = climb(probs, hier, 0.6)
    right = (hier.ancestors(targ).gather(0, level[None])[0] == group).double().mean().item()
    assert vals == pytest.approx([right, (level == 0).double().mean().item()])
    fit = learn.fit_hedge(_reachable(learn, hier))
    assert isinstance(learn.loss_func, HierarchicalLoss) and learn.loss_func.threshold == fit.threshold

def test_half_precision_predictions(tiny):
    "Predictions in bfloat16 or float16 (mixed precision) give float32 probabilities and the same hedges"
    dls,hier = tiny
    x = torch.randn(64, 37, generator=torch.Generator().manual_seed(0))*8
    lf = HierarchicalLoss(hier, decode='hedge', threshold=0.7)
    for dtype in (torch.bfloat16, torch.float16):
        p = lf.activation(x.to(dtype))
        assert p.dtype == torch.float32 and p.isfinite().all()
        assert torch.equal(lf.decodes(p), lf.decodes(lf.activation(x.to(dtype).float())))
        # half-precision probabilities are taken too
        same = hedge_decode(p.to(dtype), hier, 0.7) == hedge_decode(p, hier, 0.7)
        assert same.float().mean() > 0.95, same                                     # and differ only by their rounding
    big = lf.activation(x*1e3)   # confident: probabilities of exactly 0 and 1
    assert torch.equal(climb(big, hier, 0.99)[0], torch.zeros(64).long())

@pytest.fixture(scope='module')
def ragged():
    "Cats stand for themselves at the `group` level"
    parents = {'boston_terrier': 'terrier', 'scottish_terrier': 'terrier', 'pug': 'toy', 'chihuahua': 'toy',
               'terrier': 'dog', 'toy': 'dog', 'Persian': 'cat', 'Siamese': 'cat'}
    return Hierarchy.from_parents(parents, names=('breed', 'group', 'species'))

def test_ragged_tree(ragged):
    h = ragged
    i = h.vocab.val2idx()
    depth = h.node_depths
    assert depth[[i['Persian'], i['pug'], 6 + 0, 6 + 2, 10]].tolist() == [2, 3, 2, 2, 1]
    p = (torch.randn(300, 6, generator=torch.Generator().manual_seed(0))*2).softmax(-1)
    for t in [0., 0.3, 0.6, 0.9, 1.]:
        level,group = climb(p, h, t)
        nodes = h.node_index(level, group)
        # a cat's prediction never stops at its copy at the `group` level: the same node, with the same
        # probability, is finer
        assert torch.equal(h.level_and_group(nodes)[0], level)
        cats = torch.isin(p.argmax(-1), tensor([i['Persian'], i['Siamese']]))
        assert not (cats & (level == 1)).any()
        assert set(h.node_name(level, group)) <= set(h.vocab) | {'terrier', 'toy', 'cat', 'dog'}
    # vocab: Persian, Siamese, boston_terrier, chihuahua, pug, scottish_terrier; the terriers have 0.35 + 0.25
    assert h.node_name(*h.level_and_group(hedge_decode(tensor([[.05, .05, .35, .2, .1, .25]]), h, 0.5))) == ['terrier']

def test_ragged_threshold(ragged):
    h = ragged
    g = torch.Generator().manual_seed(1)
    targ = torch.randint(0, 6, (300,), generator=g)
    p = (torch.randn(300, 6, generator=g) + 2*(h.distances[targ] < 3) + 2*(h.distances[targ] < 2)).softmax(-1)
    t = hedge_threshold(p, targ, h, 0.9)
    ts,cov,risk = risk_coverage(p, targ, h)
    for k in range(len(ts)):
        level,group = climb(p, h, ts[k].item())
        right = (h.ancestors(targ).gather(0, level[None])[0] == group).double().mean().item()
        assert (risk[k].item() == pytest.approx(1 - right)
                and cov[k].item() == pytest.approx((level == 0).double().mean().item()))
        if ts[k] < t: assert right < 0.9
    level,group = climb(p, h, t)
    assert (h.ancestors(targ).gather(0, level[None])[0] == group).double().mean().item() >= 0.9

def test_loss_exported_before_hedging(tiny):
    "A loss pickled before it had a `threshold` still decodes and prints"
    _,hier = tiny
    lf = HierarchicalLoss(hier)
    del lf.threshold
    lf = pickle.loads(pickle.dumps(lf))
    p = torch.rand(4, 37).softmax(-1)
    assert torch.equal(lf.decodes(p), p.argmax(-1)) and repr(lf).endswith('temperature=1.0)')
    lf.decode = 'hedge'
    with pytest.raises(ValueError, match="needs a threshold"): lf.decodes(p)

def test_bad_input(hedged, tiny):
    learn,_,_ = hedged
    dls,hier = tiny
    with pytest.raises(ValueError, match='needs a loss of this package that decodes by hedging'):
        Learner(dls, nn.Linear(2, 37), loss_func=nn.CrossEntropyLoss()).fit_hedge()
    with pytest.raises(ValueError, match='got no predictions'):
        learn.fit_hedge(dl=dls.valid.new(dls.valid_ds.new_empty()))
    with pytest.raises(ValueError, match='must be a probability from 0 to 1'): HedgedAccuracy(hier, 1.2)
    with pytest.raises(ValueError, match='got 5 classes on axis -1 but the hierarchy has 37 fine classes'):
        climb(torch.full((2, 5), .2), hier, 0.5)

# Distributed: the worker below runs in two processes, as `distributed_worker.py` runs the other metrics

def _synthetic(out):
    """Both metrics on fixed predictions: 8 items (the first 4 sure and right, the last 4 torn between two siblings) and
    the first 7 of them, which `DistributedDL` pads; distributed, then in one process"""
    from distributed_worker import DISTRIB, _leave_group   # also makes `DistributedDL` broadcast on the CPU
    rank = rank_distrib()
    hier = Hierarchy.from_func(list('abcd'), lambda c: 'x' if c in 'ab' else 'y', names=('fine', 'coarse'))
    targs = [0,1,2,3, 0,1,2,3]
    def _x(i):
        x = torch.full((4,), -5.)
        if i < 4: x[targs[i]] = 5.
        else: x[targs[i]^1], x[targs[i]] = 0.1, 0.   # the sibling a little ahead: wrong fine, right coarse
        return x
    items = [(_x(i), tensor(t)) for i,t in enumerate(targs)]
    def _learn(met, its):
        dls = DataLoaders.from_dsets(its, its, bs=2, device='cpu', num_workers=0)
        model = nn.Linear(4, 4)
        with torch.no_grad(): model.weight.copy_(torch.eye(4)); model.bias.zero_()
        learn = Learner(dls, model, loss_func=HierarchicalLoss(hier), metrics=met(hier, 0.9))
        learn.remove_cb(learn.progress); learn.logger = lambda *a: None
        return learn
    res = dict(distributed={}, single={})
    for case,its in dict(even=items, odd=items[:7]).items():
        for met in (HedgedAccuracy, HedgedCoverage):
            learn = _learn(met, its)
            with learn.distrib_ctx(**DISTRIB): learn.fit(1, 0.)
            res['distributed'][f'{case} {met.__name__}'] = learn.recorder.values[-1][-1]
    _leave_group()
    if rank == 0:
        for case,its in dict(even=items, odd=items[:7]).items():
            for met in (HedgedAccuracy, HedgedCoverage):
                res['single'][f'{case} {met.__name__}'] = _learn(met, its).validate()[-1]
    (Path(out)/f'rank{rank}.json').write_text(json.dumps(res))

@pytest.mark.slow
def test_distributed_metrics(tmp_path):
    ("Each rank sees half of the items; the values are those of one process, also where "
     "`DistributedDL` pads 7 items to 8")
    pytest.importorskip('accelerate')
    from test_distributed import _launch
    (r0,r1),_ = _launch(tmp_path, script=Path(__file__))
    assert r0['distributed'] == r1['distributed']
    assert r0['distributed'] == pytest.approx(r0['single'])
    assert r0['single'] == pytest.approx({'even HedgedAccuracy': 1., 'even HedgedCoverage': .5,
                                          'odd HedgedAccuracy': 1., 'odd HedgedCoverage': 4/7})

if __name__ == '__main__':
    torch.set_num_threads(1)
    _synthetic(sys.argv[1])

def test_show_doc_names_hedgefit_by_its_module():
    "The docs run the notebook as `__main__`: `fit_hedge`'s return type still reads `fastai_hier.hedge.HedgeFit` there"
    nb = json.loads((HERE.parent/'nbs'/'21_hedge.ipynb').read_text())
    src = next(''.join(c['source']) for c in nb['cells'] if "HedgeFit = namedtuple(" in ''.join(c['source']))
    ns = {'__name__': '__main__'}
    exec('from collections import namedtuple\n' + src.split('HedgeFit.__doc__')[0].replace('#| export', ''), ns)
    assert ns['HedgeFit'].__module__ == 'fastai_hier.hedge'
    assert '__main__.HedgeFit' not in json.dumps(nb)
