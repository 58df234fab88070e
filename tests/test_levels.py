("Predictions at every level (`fastai_hier.levels`) in real fastai learners: `predict`, `get_level_preds` and "
 "`LevelAccuracy` agree item by item for each decode; fastai's own tools after hedging or CRM; half precision; a table")
import json, warnings
from pathlib import Path
from types import SimpleNamespace
import matplotlib; matplotlib.use('Agg')
import numpy as np, pandas as pd, pytest, torch
from fastai.vision.all import (URLs, ClassificationInterpretation, Interpretation, load_learner, plt, resnet18,
                               set_seed, untar_data, vision_learner)
from fastai_hier.all import (HierarchicalLoss, Hierarchy, LevelAccuracy, climb, level_probs, pets_dls,
                             pets_hierarchy)

DECODES = ('argmax', 'greedy', 'marginal', 'crm', 'hedge')
FIXTURES = Path(__file__).parent/'fixtures'

@pytest.fixture(scope='module')
def trained():
    "3 images a breed at 32 px, a resnet18 from scratch trained 2 epochs, its hedge threshold fitted"
    dls = pets_dls(untar_data(URLs.PETS)/'images', size=32, bs=16, per_breed=3)
    hier = pets_hierarchy(dls.vocab)
    set_seed(0)
    learn = vision_learner(dls, resnet18, pretrained=False,
                           loss_func=HierarchicalLoss(hier, level_weights={'breed': 0.5, 'species': 0.5}))
    learn.fit(2, 1e-3)
    probs,targ = learn.get_preds()
    # a threshold that hedges some items and not others, halfway between two items' top probabilities: one item alone
    # is computed in another batch shape, which may round its probabilities differently
    top = probs.max(-1).values.sort().values
    k = len(top)//2
    return learn,hier,float(top[k-1] + top[k])/2

def _one(metric, learn, pred, targ):
    "`metric`'s value on one item, as `validate` accumulates it"
    metric.reset()
    metric.accumulate(SimpleNamespace(pred=pred, yb=(targ,), loss_func=learn.loss_func, to_detach=lambda t: t))
    return metric.value.item()

@pytest.mark.parametrize('decode', DECODES)
def test_predict_levels_and_metric_agree(trained, decode):
    "For each decode: `predict`, `predict_levels`, `get_level_preds` and `LevelAccuracy` say the same, item by item"
    learn,hier,t = trained
    lf = learn.loss_func
    lf.decode,lf.threshold = decode,t
    try:
        df = learn.get_level_preds()
        logits,targ = learn.get_preds(act=lambda x: x)
        probs = logits.float().softmax(-1)
        mets = [LevelAccuracy(hier, n) for n in hier.names]
        items = learn.dls.valid_ds.items
        for i,item in enumerate(items):
            name,idx,p = learn.predict(item)
            levels = learn.predict_levels(item)
            row = {k:(None if pd.isna(v) else v) for k,v in df.iloc[i].items()}
            assert list(levels) == hier.names
            assert [c for c,_ in levels.values()] == [row[n] for n in hier.names], (decode, i)
            # `predict`'s class (a node with 'hedge') is the finest level the per-level call gives
            level = next(k for k,n in enumerate(hier.names) if row[n] is not None)
            assert str(name) == row[hier.names[level]], (decode, i)
            group = hier.classes[level].val2idx()[row[hier.names[level]]]
            assert int(idx) == hier.node_index(torch.tensor(level), group)
            # the metric counts the item right exactly where the per-level call names the target's group
            for k,(n,m) in enumerate(zip(hier.names, mets)):
                want = float(row[n] == hier.classes[k][hier.to_level(targ[i], k)])
                assert _one(m, learn, logits[i:i+1], targ[i:i+1]) == want, (decode, i, n)
            # probabilities: sums of the fine softmax over the group; one item as in the batch
            for k,n in enumerate(hier.names):
                if row[n] is None:
                    assert np.isnan(levels[n][1])
                    continue
                g = hier.classes[k].val2idx()[row[n]]
                s = probs[i][hier.maps[k] == g].sum().item()
                assert row[f'{n}_prob'] == pytest.approx(s, abs=1e-5)
                assert levels[n][1] == pytest.approx(s, abs=1e-5)
        # and over the validation set, as `validate` reports it
        learn.metrics = mets
        vals = learn.validate()[1:]
        for k,n in enumerate(hier.names):
            want = np.mean([c == hier.classes[k][hier.to_level(y, k)] for c,y in zip(df[n], targ)])
            assert vals[k] == pytest.approx(want)
    finally:
        lf.decode,lf.threshold,learn.metrics = 'argmax',None,[]

def test_decodes_differ_where_they_should(trained):
    "The hedge stops short of the breed where the argmax's path is not sure enough; 'marginal' is not always a path"
    learn,hier,t = trained
    probs,_ = learn.get_preds()
    with learn.hedged(t): df = learn.get_level_preds()
    assert df.breed.isna().sum() == (climb(probs, hier, t)[0] > 0).sum().item() > 0
    assert learn.loss_func.decode == 'argmax' and learn.loss_func.threshold is None   # a context: nothing kept
    marginal,argmax = learn.get_level_preds(decode='marginal'),learn.get_level_preds()
    assert (marginal.breed == argmax.breed).all()
    sp = level_probs(probs, hier)[1]
    assert (marginal.species == [hier.classes[1][i] for i in sp.argmax(-1)]).all()

def test_half_precision(trained):
    ("Under `to_fp16` (a no-op on CPU, where fastai's autocast is CUDA's) and under a CPU bfloat16 autocast, the "
     "probabilities are float32 sums of the fine softmax")
    learn,hier,_ = trained
    ref = learn.get_level_preds()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = learn.get_preds(act=lambda x: x)[0]
        df = learn.get_level_preds()
    assert logits.dtype == torch.bfloat16
    assert df.breed_prob.dtype == np.float32 and df.species_prob.dtype == np.float32
    sums = level_probs(logits.float().softmax(-1), hier)
    g = torch.tensor([hier.classes[1].val2idx()[c] for c in df.species])
    np.testing.assert_allclose(df.species_prob, sums[1].gather(1, g[:,None])[:,0].numpy(), atol=1e-5)
    assert (df.species == ref.species).mean() > 0.8   # bfloat16 logits round some ties differently
    learn.to_fp16()
    try:
        df16 = learn.get_level_preds()
        assert df16.breed_prob.dtype == np.float32
        pd.testing.assert_frame_equal(df16, ref, atol=1e-3, check_exact=False)
        assert learn.predict_levels(learn.dls.valid_ds.items[0]) == pytest.approx(
            learn.to_fp32().predict_levels(learn.dls.valid_ds.items[0]))
    finally: learn.to_fp32()

@pytest.mark.parametrize('how', ['fit_hedge', 'crm'])
def test_fastai_tools_get_fine_classes(trained, how):
    ("Issue 33: after `fit_hedge` (which keeps the threshold, not the decode) or under `decode='crm'`, fastai's "
     "`ClassificationInterpretation`, `Interpretation`, `show_results` and `plot_top_losses` receive fine classes")
    learn,hier,t = trained
    lf = learn.loss_func
    if how == 'fit_hedge':
        probs,targ = learn.get_preds()
        acc = [(hier.ancestors(targ).gather(0, climb(probs, hier, u)[0][None])[0]
                == climb(probs, hier, u)[1]).double().mean().item() for u in (0., 1.)]
        fit = learn.fit_hedge(sum(acc)/2)
        assert (lf.decode, lf.threshold) == ('argmax', fit.threshold)
    else: lf.decode = 'crm'
    try:
        n = len(learn.dls.valid_ds)
        interp = ClassificationInterpretation.from_learner(learn)
        assert interp.confusion_matrix().sum() == n                     # every item counted, none dropped
        probs,_,decoded = learn.get_preds(with_decoded=True)   # what the confusion matrix reads, when it is made
        assert (decoded < len(hier)).all()
        if how == 'crm':
            from fastai_hier.all import crm_decode
            assert torch.equal(decoded, crm_decode(probs, hier))
        assert len(Interpretation.from_learner(learn).top_losses(5)[0]) == 5
        learn.show_results(max_n=4)
        interp.plot_top_losses(4)
        titles = [a.get_title() for f in map(plt.figure, plt.get_fignums()) for a in f.axes]
        # show_results titles: the prediction, then the target; plot_top_losses: prediction/actual/loss/probability
        said = {w for s in titles for w in s.replace('/', '\n').split('\n')}
        assert said and not (said & {'cat', 'dog'}), titles
        plt.close('all')
        if how == 'fit_hedge':   # asked for, the hedge names groups; and only inside the context
            with learn.hedged(): _,_,nodes = learn.get_preds(with_decoded=True)
            assert (nodes >= len(hier)).any() and lf.decode == 'argmax'
    finally: lf.decode,lf.threshold = 'argmax',None

def test_tabular_learner():
    ("A tabular learner (one row, as `predict` takes it, and a `test_dl` of rows): its probabilities are the "
     "summed softmax; the per-level call assumes nothing of images")
    from fastai.tabular.all import CategoryBlock, Categorify, Normalize, TabularDataLoaders, tabular_learner
    rng = np.random.default_rng(0)
    df = pd.DataFrame({'x': rng.normal(size=60), 'y': rng.normal(size=60), 'c': rng.choice(['u', 'v'], 60),
                       'breed': rng.choice(['Bengal', 'Persian', 'pug', 'boxer'], 60)})
    dls = TabularDataLoaders.from_df(df, procs=[Categorify, Normalize], cat_names=['c'], cont_names=['x', 'y'],
                                     y_names='breed', y_block=CategoryBlock(), bs=16, valid_idx=list(range(40, 60)))
    hier = Hierarchy.from_func(dls.vocab, lambda b: 'cat' if b[0].isupper() else 'dog', names=('breed', 'species'))
    set_seed(0)
    learn = tabular_learner(dls, layers=[8], n_out=len(dls.vocab), loss_func=HierarchicalLoss(hier, decode='crm'))
    tdl = dls.test_dl(df.iloc[40:])
    table = learn.get_level_preds(dl=tdl)
    probs = learn.get_preds(dl=tdl)[0]
    assert len(table) == 20
    sums = level_probs(probs, hier)
    for k,n in enumerate(hier.names):
        g = torch.tensor([hier.classes[k].val2idx()[c] for c in table[n]])
        np.testing.assert_allclose(table[f'{n}_prob'], sums[k].gather(1, g[:,None])[:,0].numpy(), atol=1e-6)
    row = df.iloc[45]
    levels = learn.predict_levels(row)
    assert [c for c,_ in levels.values()] == list(table.iloc[5][hier.names])
    _,idx,_ = learn.predict(row)   # a tabular learner's `predict`: the decoded row, the class index, the probabilities
    assert dls.vocab[int(idx)] == levels['breed'][0]

def test_old_export_levels():
    ("A learner exported by 0.1.0 (`decode='crm'`): `predict_levels` says what `predict` says, and its pickled "
     "`LevelAccuracy` keeps the reading it had, each level's own argmax")
    ref = json.loads((FIXTURES/'learner_v0.1.0.json').read_text())
    images = untar_data(URLs.PETS)/'images'   # the sample the fixture's images are from (conftest.py)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        learn = load_learner(FIXTURES/'learner_v0.1.0.pkl')
    hier = learn.loss_func.func.hier
    for r in ref['predictions'][:3]:
        levels = learn.predict_levels(images/r['image'])
        assert levels['breed'][0] == r['decoded']
        species = hier.maps[1] == hier.classes[1].val2idx()[levels['species'][0]]
        assert levels['species'][1] == pytest.approx(torch.tensor(r['probs'])[species].sum().item(), abs=1e-5)
    (m,) = learn.metrics
    assert (m.decode, m.name) == ('marginal', 'species_accuracy_marginal')
