("Hierarchical precision, recall and F1 against hiclass's `precision`, `recall` and `f1` (micro average) on random "
 "trees, ragged ones included")
import random
import numpy as np, pytest, torch
from fastai_hier.hierarchy import Hierarchy
from fastai_hier.metrics import hierarchical_prf, HierarchicalPrecision, HierarchicalRecall, HierarchicalF1

hiclass_metrics = pytest.importorskip('hiclass.metrics',
                                      reason="hiclass is not installed (`pip install hiclass`, in the `dev` extras): "
                                             "it is the reference these tests compare with")

def random_tree(rng, n_levels, ragged):
    ("Child -> parent links of a random tree with `n_levels` levels (fine classes included) below an implicit root; "
     "where `ragged`, some leaves are above the fine level")
    parents,count = {},[0]
    def grow(node, depth, deep):
        # the top groups are at depth 1; a node at depth `n_levels` is a fine class
        if depth == n_levels: return
        for j in range(rng.randint(1, 3)):
            count[0] += 1
            kid = f'n{count[0]}'
            parents[kid] = node
            # the first child of a deep node is deep: one path goes all the way down, so the tree has `n_levels` levels
            # a leaf above the fine level
            if ragged and depth+1 < n_levels and not (deep and j == 0) and rng.random() < 0.3: continue
            grow(kid, depth+1, deep and j == 0)
    # each top group has children: a top group alone would be a leaf at every level, which `Hierarchy` can't hold
    for t in range(rng.randint(2, 3)): grow(f'top{t}', 1, t == 0)
    return parents

def label_path(leaf, parents):
    "hiclass's format: the labels from the top group down to `leaf`"
    path = [leaf]
    while path[-1] in parents: path.append(parents[path[-1]])
    return path[::-1]

def hiclass_prf(pred, targ, hier):
    ("hiclass's micro-averaged precision, recall and F1 on label paths, ragged ones padded with '' at the end (as "
     "`make_leveled` does)")
    paths = [label_path(v, hier.parents) for v in hier.vocab]
    n = max(map(len, paths))
    paths = np.array([p + ['']*(n-len(p)) for p in paths])
    y_pred,y_true = paths[pred.numpy()],paths[targ.numpy()]
    return (hiclass_metrics.precision(y_true, y_pred), hiclass_metrics.recall(y_true, y_pred),
            hiclass_metrics.f1(y_true, y_pred, zero_division=0.))

class _FakeLearner:
    def __init__(self, pred, targ): self.pred,self.yb = pred,(targ,)
    def to_detach(self, t): return t.detach()

@pytest.mark.parametrize('ragged', [False, True])
@pytest.mark.parametrize('seed', range(20))
def test_same_as_hiclass(seed, ragged):
    rng = random.Random(seed)
    n_levels = rng.randint(3 if ragged else 2, 4)   # with 2 levels, a shorter path would be a lone top group
    while True:
        parents = random_tree(rng, n_levels, ragged)
        depths = {len(label_path(c, parents)) for c in set(parents) - set(parents.values())}
        if not ragged or len(depths) > 1: break
    hier = Hierarchy(parents)
    assert hier.n_levels == n_levels and (len(depths) > 1) == ragged
    g = torch.Generator().manual_seed(seed)
    n = rng.randint(1, 300)
    targ = torch.randint(0, len(hier), (n,), generator=g)
    # near misses as well as random predictions: a sibling of the target in half of the items
    pred = torch.randint(0, len(hier), (n,), generator=g)
    near = torch.rand(n, generator=g) < 0.5
    sib = torch.tensor([rng.choice([i for i,v in enumerate(hier.vocab) if parents[v] == parents[hier.vocab[t]]])
                        for t in targ.tolist()])
    pred = torch.where(near, sib, pred)
    ours,theirs = hierarchical_prf(pred, targ, hier),hiclass_prf(pred, targ, hier)
    assert ours == pytest.approx(theirs, abs=1e-12)
    # the metrics, over batches of the logits, agree with both
    logits = torch.randn(n, len(hier), generator=g)
    logits[torch.arange(n), pred] = 10.
    for m,v in zip([HierarchicalPrecision(hier), HierarchicalRecall(hier), HierarchicalF1(hier)], theirs):
        m.reset()
        for i in range(0, n, 32): m.accumulate(_FakeLearner(logits[i:i+32], targ[i:i+32]))
        assert m.value == pytest.approx(v, abs=1e-12)

def test_ragged_differs_from_counting_per_level():
    ("A leaf that stands for itself at coarser levels is one node, for hiclass and here: its right prediction doesn't "
     "count once per level")
    hier = Hierarchy.from_dict({'mammal': {'cat': ['Bengal', 'Persian'], 'dog': ['boxer', 'pug']},
                                'fish': ['salmon', 'trout']})
    ix = {o:i for i,o in enumerate(hier.vocab)}
    pred = torch.tensor([ix[o] for o in ['Persian', 'boxer', 'salmon', 'Bengal']])
    targ = torch.tensor([ix[o] for o in ['Bengal', 'salmon', 'salmon', 'pug']])
    assert hierarchical_prf(pred, targ, hier) == pytest.approx(hiclass_prf(pred, targ, hier))
    assert hierarchical_prf(pred, targ, hier)[:2] == pytest.approx((5/11, 5/10))

def test_no_common_node():
    "Nothing right at any level: both give F1 0 (hiclass warns unless told `zero_division`)"
    hier = Hierarchy({'a': 'A', 'b': 'A', 'c': 'B', 'd': 'B'})
    pred,targ = torch.tensor([0, 1]),torch.tensor([2, 3])
    assert hierarchical_prf(pred, targ, hier) == (0., 0., 0.)
    assert hiclass_prf(pred, targ, hier) == (0., 0., 0.)
