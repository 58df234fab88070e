("Large taxonomies: 10,000 fine classes in 7 levels, as iNaturalist's, with no per-class loops and no "
 "class-by-class matrices")
import math, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from types import SimpleNamespace
from fastai_hier.all import Hierarchy, HierarchicalLoss, MistakeSeverity, level_accuracy, hierarchical_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'bench'))
from loss_cost import random_tree as bench_tree

SIZES = (10000, 4884, 1103, 273, 51, 11, 3)   # iNaturalist 2021: species, genus, family, order, class, phylum, kingdom

def random_tree(sizes, seed=0, **kwargs):
    "A random `Hierarchy` with `sizes[i]` groups at level i, none empty, over a shuffled vocab (the benchmark's trees)"
    return Hierarchy.from_parents(*bench_tree(sizes, seed), **kwargs)

@pytest.fixture(scope='module')
def big(): return random_tree(SIZES, names=['species', 'genus', 'family', 'order', 'class', 'phylum', 'kingdom'])

def test_levels(big):
    assert big.n_classes == list(SIZES)
    assert big.maps.shape == (7, 10000) and big.maps.dtype == torch.long
    for i in range(1, 7):   # every group of a level lies in one group of the next
        up = big.ups[i-1]
        assert (up[big.maps[i-1]] == big.maps[i]).all()

def reference(x, targ, hier, weights):
    ("The loss from `Hierarchy.coarsen`: log-sum-exps of the log-softmax within each group; in a ragged tree a level "
     "where the target is a padded copy of itself counts no more (`distinct_nodes`)")
    lp = F.log_softmax(x.double(), -1)
    own = hier.distinct_nodes[:, targ]
    return -sum(w*own[i]*hier.coarsen(lp, i).gather(-1, hier.to_level(targ, i)[:,None])[:,0]
                for i,w in enumerate(weights)).mean()

def test_loss_matches_log_space_reference(big):
    torch.manual_seed(0)
    x,targ = torch.randn(64, 10000)*4,torch.randint(0, 10000, (64,))
    weights = [.3, 0., .1, .1, .1, .2, .2]
    xg = x.clone().requires_grad_()
    loss = HierarchicalLoss(big, weights)(xg, targ)
    loss.backward()
    xr = x.double().requires_grad_()
    ref = reference(xr, targ, big, weights)
    ref.backward()
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    assert torch.allclose(xg.grad.double(), xr.grad, atol=1e-7)

def test_confident_logits_stay_finite(big):
    "A model sure of a class in another kingdom: the target's groups are summed in log space"
    targ = torch.arange(8)*1000
    wrong = big.maps[-1][targ] != big.maps[-1][(targ+1)%10000]
    x = torch.full((8, 10000), -50.)
    x[torch.arange(8), (targ+1)%10000] = 60.
    xg = x.clone().requires_grad_()
    loss = HierarchicalLoss(big)(xg, targ)
    loss.backward()
    assert loss.isfinite() and xg.grad.isfinite().all()
    ref = reference(x, targ, big, [1/7]*7)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5), (loss.item(), ref.item())
    assert wrong.any() # some targets are in another kingdom than the prediction

def test_metrics_need_no_class_by_class_matrix(big):
    preds,targ = torch.randn(32, 10000),torch.randint(0, 10000, (32,))
    assert 0 <= level_accuracy(preds, targ, big, 'genus') <= 1
    assert 0 <= hierarchical_distance(preds, targ, big, k=5) <= 7
    ms = MistakeSeverity(big)
    ms.reset()
    ms.accumulate(SimpleNamespace(pred=preds, yb=(targ,), to_detach=lambda x: x))
    assert 0 < ms.value <= 7
    assert big._distances is None   # the 10,000 x 10,000 matrix was never built
    pred = preds.argmax(-1)
    df = big.df   # one row per class, its group at every level
    expected = [int((df.iloc[a] != df.iloc[b]).sum()) for a,b in zip(targ.tolist(), pred.tolist())]
    assert big.distance(targ, pred).tolist() == expected
    assert big._distances is None

def test_label_smoothing_matches_dense_formula():
    "With label smoothing every group's log-probability counts: against group sums by a dense one-hot matmul in float64"
    sizes = (1000, 300, 60, 10)
    hier = random_tree(sizes, seed=1)
    torch.manual_seed(0)
    x,targ,eps,weights = torch.randn(32, 1000)*4,torch.randint(0, 1000, (32,)),0.1,[.4, .3, 0., .3]
    p = x.double().softmax(-1)
    ref = 0.
    for i,w in enumerate(weights):
        log_P = (p @ F.one_hot(hier.maps[i], sizes[i]).double()).log()
        nll = -log_P.gather(-1, hier.to_level(targ, i)[:,None])[:,0]
        ref = ref + w*((1-eps)*nll - eps*log_P.mean(-1))
    loss = HierarchicalLoss(hier, weights, label_smoothing=eps)(x, targ)
    assert math.isclose(loss.item(), ref.mean().item(), rel_tol=1e-5)

def test_crm_needs_no_class_by_class_matrix(big):
    "CRM at 10,000 classes from the group sums: the risk of the class it picks is the least, by brute force on a sample"
    from fastai_hier.all import crm_decode, crm_risk
    torch.manual_seed(0)
    p = (torch.randn(4, 10000)*3).softmax(-1)
    pred = crm_decode(p, big)
    assert big._distances is None
    # brute force for the chosen class and 500 others, in float64: sum_i p_i d(i, j), d from the index tensors
    cand = torch.cat([pred[:,None], torch.randint(0, 10000, (4, 500))], 1)
    i = torch.arange(10000)
    brute = torch.stack([torch.stack([(p[r].double()*big.distance(i, j).double()).sum() for j in cand[r]])
                         for r in range(4)])
    assert (brute[:,:1] <= brute[:,1:] + 1e-9).all()
    assert torch.allclose(crm_risk(p, big).gather(1, cand).double(), brute, atol=1e-4)
    assert big._distances is None

@pytest.mark.skipif(not Path('/usr/share/wordnet/data.noun').exists(),
                    reason='WordNet is not installed (apt-get install -y wordnet-base)')
def test_wordnet_losses_match_the_log_space_reference():
    "WordNet's giant, ragged groups: every level summed; the loss and its gradient against float64"
    wn = Hierarchy.from_wordnet()
    torch.manual_seed(0)
    x,targ = torch.randn(4, len(wn))*4,torch.randint(0, len(wn), (4,))
    xg = x.clone().requires_grad_()
    loss = HierarchicalLoss(wn)(xg, targ)
    loss.backward()
    xr = x.double().requires_grad_()
    ref = reference(xr, targ, wn, [1/7]*7)
    ref.backward()
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    # float32 sums over groups of up to 36,727 nouns: the top level's gradient is off by 5e-7 at -0.047 (1e-5
    # relative), before and after padded levels stopped counting
    assert torch.allclose(xg.grad.double(), xr.grad, atol=3e-7)
