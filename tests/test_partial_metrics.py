"""Partial labels (node-index targets) in the metrics of a real `Learner`: `validate()` against the formulas written by
hand, and `LevelAccuracy` in fastai's distributed training (two CPU processes, gloo), which this file runs as its
worker"""
import json, math, sys
from pathlib import Path
import pytest, torch
from fastai.basics import DataLoaders, Learner, nn, tensor
from fastai_hier.all import ECE, HedgedAccuracy, Hierarchy, HierarchicalF1, LevelAccuracy, MistakeSeverity, climb

HERE = Path(__file__).resolve().parent
HIER = Hierarchy.from_func(list('abcd'), lambda c: 'x' if c in 'ab' else 'y', names=('fine', 'coarse'))
X,Y = HIER.node_of('x'),HIER.node_of('y')
# predictions a, b, c, d, a, b, c, d; targets: four fine (three right, one at distance 1), three groups (two right, one
# at distance 1), one fine at distance 2
PREDS = [0, 1, 2, 3, 0, 1, 2, 3]
TARGS = [0, 1, 2, 2, X, Y, Y, 0]

def _learner(preds, targs, metrics, bs=2):
    "A learner whose predictions are the given classes, about 90% confident; its loss ignores the targets"
    def _x(p): x = torch.tensor([0., .1, .2, .3]); x[p] = math.log(27); return x
    items = [(_x(p), tensor(t)) for p,t in zip(preds, targs)]
    model = nn.Linear(4, 4) # the identity: the predictions are the inputs
    with torch.no_grad(): model.weight.copy_(torch.eye(4)); model.bias.zero_()
    learn = Learner(DataLoaders.from_dsets(items, items, bs=bs, device='cpu', num_workers=0), model,
                    loss_func=lambda p,t: (p*0).sum(), metrics=metrics)
    learn.remove_cb(learn.progress)
    learn.logger = lambda *a: None
    return learn

def _hand():
    "Each level over the items whose target defines it, the tree distance over the levels it defines"
    pred,(fine,level) = tensor(PREDS),HIER.node_targets(tensor(TARGS))
    right = HIER.ancestors(pred) == HIER.ancestors(fine)            # (levels, items)
    defined = torch.arange(2)[:,None] >= level
    d = (~right & defined).sum(0).float()
    return dict(fine=right[0][defined[0]].float().mean().item(), coarse=right[1].float().mean().item(),
                severity=(d.sum()/(d > 0).sum()).item())

def test_validate_counts_each_level_over_the_items_that_define_it():
    hand = _hand()
    # the third batch, two groups, has no fine item
    assert (hand['fine'], hand['coarse'], hand['severity']) == pytest.approx((3/5, 6/8, 4/3))
    learn = _learner(PREDS, TARGS, [LevelAccuracy(HIER, 'fine'), LevelAccuracy(HIER, 'coarse'), MistakeSeverity(HIER)])
    _,fine,coarse,severity = learn.validate()
    assert (fine == pytest.approx(hand['fine']) and coarse == pytest.approx(hand['coarse'])
            and severity == pytest.approx(hand['severity']))
    # the fully labelled items alone give the same fine accuracy
    keep = [i for i,t in enumerate(TARGS) if t < len(HIER)]
    assert _learner([PREDS[i] for i in keep], [TARGS[i] for i in keep],
                    [LevelAccuracy(HIER, 'fine')]).validate()[1] == pytest.approx(fine)

def test_other_metrics_in_a_learner():
    ("Hedged accuracy at the coarser of the two levels, ECE of the items that define the level, hF1 with T the "
     "target and its ancestors")
    probs = _learner(PREDS, TARGS, []).get_preds()[0].softmax(-1) # the loss has no activation
    level,group = climb(probs, HIER, .95) # all climb to their group
    assert (level == 1).all()
    learn = _learner(PREDS, TARGS,
                     [HedgedAccuracy(HIER, .95), ECE(hier=HIER), ECE(hier=HIER, level='coarse'), HierarchicalF1(HIER)])
    _,hedged,ece_fine,ece_coarse,hf1 = learn.validate()
    assert hedged == pytest.approx(_hand()['coarse'])
    conf = probs.max(-1).values
    right = torch.tensor([p == t for p,t in zip(PREDS, TARGS)])
    fine = torch.tensor([t < len(HIER) for t in TARGS])
    # one bin holds them all
    assert ece_fine == pytest.approx(abs(right[fine].float().mean() - conf[fine].mean()).item(), abs=1e-6)
    # |P∩T| = 2+2+2+1 (fine), 1+0+1 (groups), 0 (fine); |P| = 8*2; |T| = 5*2 + 3*1
    p,r = 9/16,9/13
    assert hf1 == pytest.approx(2*p*r/(p+r))
    with pytest.raises(ValueError, match='ECE got target 5 for predictions over 4 classes'):
        _learner(PREDS, TARGS, [ECE()]).validate()
    with pytest.raises(ValueError, match='LevelAccuracy got targets from 5 to 6, but the hierarchy has 6 nodes'):
        _learner(PREDS, TARGS[:-1] + [6], [LevelAccuracy(HIER, 'coarse')]).validate()

@pytest.mark.slow
def test_level_accuracy_distributed(tmp_path):
    "Both sums are averaged across the processes: the ratio is that of the whole set, on both ranks"
    pytest.importorskip('accelerate')
    from test_distributed import _launch
    (r0,r1),_ = _launch(tmp_path, script=Path(__file__))
    hand = _hand()
    assert r0['distributed'] == r1['distributed']
    assert r0['distributed'] == pytest.approx([hand['fine'], hand['coarse']], rel=1e-6)
    assert r0['single'] == pytest.approx([hand['fine'], hand['coarse']], rel=1e-6)

def _worker(out):
    from fastai.basics import rank_distrib
    from distributed_worker import DISTRIB, _leave_group # its CPU broadcast for `DistributedDL`, on import
    rank,res = rank_distrib(),{}
    learn = _learner(PREDS, TARGS, [LevelAccuracy(HIER, 'fine'), LevelAccuracy(HIER, 'coarse')])
    with learn.distrib_ctx(**DISTRIB): learn.fit(1, 0.)
    res['distributed'] = [float(v) for v in learn.recorder.values[-1][-2:]]
    _leave_group()
    if rank == 0:
        res['single'] = [float(v) for v in _learner(PREDS, TARGS, [LevelAccuracy(HIER, 'fine'),
                                                                   LevelAccuracy(HIER, 'coarse')]).validate()[1:]]
    (Path(out)/f'rank{rank}.json').write_text(json.dumps(res))

if __name__ == '__main__':
    torch.set_num_threads(1)
    _worker(sys.argv[1])

def test_fit_temperature_refuses_group_targets():
    "The temperature minimises the fine classes' NLL, which a group label does not define"
    learn = _learner(PREDS, TARGS, [])
    with pytest.raises(ValueError,
                       match=r"3 held-out target\(s\) are groups \(partial labels\): fit it on fully "
                             r"labelled held-out data"):
        learn.fit_temperature()
    keep = [i for i,t in enumerate(TARGS) if t < len(HIER)]
    assert _learner([PREDS[i] for i in keep], [TARGS[i] for i in keep], []).fit_temperature().temperature > 0
