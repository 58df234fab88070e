"The deep-taxonomy study's pieces on synthetic features: loading what exists, the held-out split, the choice, resume"
import json, copy
from pathlib import Path
import pytest, torch, numpy as np, pandas as pd
from tiny_imagenet_study import (load_split, holdout_split, choose, best_loss, run_study, Study, feature_dls, LIT,
                                 calibration, score)
from tiny_imagenet_report import report, goal_table
from fastai_hier.cli.report import paired_differences

WORDNET = Path('/usr/share/wordnet/data.noun')
pytestmark = pytest.mark.skipif(not WORDNET.exists(), reason="needs WordNet's data.noun (apt-get install wordnet-base)")
# Tiny ImageNet's first classes: fish, amphibians, reptiles, birds, ... (sorted wnids)
WNIDS = ['n01443537', 'n01629819', 'n01641577', 'n01644900', 'n01698640', 'n01742172']

def make_features(root:Path, n_train:int=24, n_valid:int=10, chunk:int=32, seed:int=0):
    "Features as `extract_features` writes them, of `WNIDS` in class order: a class-dependent mean plus noise"
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(len(WNIDS), 1280, generator=g)
    for split,n in (('train', n_train), ('valid', n_valid)):
        y = torch.arange(len(WNIDS)).repeat_interleave(n)
        x = 0.04*means[y] + torch.randn(len(y), 1280, generator=g) # some mistakes at every seed
        b6 = torch.randn(len(y), 192, 4, 4, generator=g).half()
        d = root/split
        d.mkdir(parents=True)
        meta = dict(arch='tf_efficientnet_lite0', weights='synthetic', size=[128, 128], n=len(y), chunk=chunk,
                    features=['output_avg', 'input:model.blocks.6'], vocab=WNIDS)
        (d/'meta.json').write_text(json.dumps(meta))
        for k in range(0, len(y), chunk):
            torch.save({'output_avg':x[k:k+chunk], 'input:model.blocks.6':b6[k:k+chunk], 'y':y[k:k+chunk]},
                       d/f'chunk_{k//chunk:05d}.pt')
    return root

def tiny_config():
    cfg = json.loads((Path(__file__).parents[1]/'studies'/'tiny_imagenet.json').read_text())
    cfg.update(bs=16, max_epochs=2, seeds=[0, 1], holdout_pct=25)
    cfg['methods'] = [dict(method='ce', loss='ce', grid=[{}], final='all'),
                      dict(method='hxe', loss='hxe', main='alpha', grid=[{'alpha':0.1}, {'alpha':0.6}], final=[0]),
                      dict(method='frame', loss='frame', main='alpha', grid=[{'alpha':0.4, 'gamma':3}], final='best')]
    cfg['stage'].update(per_class=6, bs=8, max_epochs=1, seeds=[0, 1])
    return cfg

def test_load_split_whole_classes(tmp_path):
    root = make_features(tmp_path)
    d = load_split(root/'train', ['output_avg'])
    assert d['x']['output_avg'].shape == (6*24, 1280) and d['vocab'] == WNIDS
    # images 96 to 127 missing: the chunks present end with class 3, which may go on in the next one (they cannot
    # tell), so 3 classes are whole
    (root/'train'/'chunk_00003.pt').unlink()
    with pytest.raises(FileNotFoundError, match='first 3 classes are complete'):
        load_split(root/'train', ['output_avg'])
    d = load_split(root/'train', ['output_avg'], 3)
    assert d['y'].tolist() == sorted(d['y'].tolist()) and set(d['y'].tolist()) == {0, 1, 2}
    assert len(d['y']) == 3*24 and d['vocab'] == WNIDS[:3]
    with pytest.raises(ValueError, match="no feature 'output_max'"): load_split(root/'train', ['output_max'])

def test_holdout_split_stratified_and_disjoint():
    y = torch.arange(5).repeat_interleave(20)
    fit,held = holdout_split(y, 10, 0)
    assert not set(fit) & set(held) and sorted(fit + held) == list(range(100))
    assert np.bincount(y[held].numpy()).tolist() == [2]*5
    assert holdout_split(y, 10, 0)[1] == held and holdout_split(y, 10, 1)[1] != held

def test_feature_dls_batches():
    x,y = torch.randn(40, 8).half(),torch.arange(4).repeat_interleave(10)
    dls = feature_dls(x, y, list(range(0, 40, 2)), x[:6], y[:6], list('abcd'), bs=4)
    xb,yb = dls.one_batch()
    assert xb.dtype == torch.float32 and xb.shape == (4, 8) and dls.vocab == list('abcd') and dls.c == 4
    assert len(dls.train) == 5 and sum(len(b[1]) for b in dls.valid) == 6

def _held(rows):
    "A held-out table: (method, point, epoch, top-1 argmax, hd@5 crm)"
    res = []
    for m,p,e,top1,hd in rows:
        for d,h in (('argmax', hd+1), ('crm', hd)):
            res.append(dict(method=m, point=p, loss=m, opts='{}', seed=0, epoch=e, decode=d, top1_accuracy=top1,
                            mistake_severity=1., **{'hd@1':1., 'hd@5':h, 'hd@20':1.}))
    return pd.DataFrame(res)

def test_choose_rule():
    held = _held([('ce', 'ce', 1, .60, 3.0), ('ce', 'ce', 2, .62, 3.1), # best top-1 .62: the floor .615
                  ('a', 'a1', 1, .616, 2.5), ('a', 'a1', 2, .61, 2.0),  # epoch 2 below the floor
                  ('a', 'a2', 1, .63, 2.8),
                  ('b', 'b1', 1, .50, 1.0), ('b', 'b1', 2, .55, 1.5)])  # never within the floor: its best top-1
    ms = [dict(method='ce', final='all'), dict(method='a', final='best'), dict(method='b', final='all')]
    res = {o['point']:o for o in choose(held, ms, .005)}
    assert res['ce']['epochs'] == 2 and res['ce']['within_slack'] # .60 is below the floor
    assert res['a1']['epochs'] == 1 and res['a1']['final'] and not res['a2']['final']
    assert res['b1']['epochs'] == 2 and not res['b1']['within_slack'] and res['b1']['final']
    assert best_loss(list(res.values()), exclude=('ce',)) == 'a1'

def test_study_resumes_and_chooses_on_held_out_only(tmp_path, monkeypatch):
    root,out,cfg = make_features(tmp_path/'f'),tmp_path/'out',tiny_config()
    trained = []
    orig = Study._run
    def _count(self, *args, **kwargs): trained.append(args[1]); return orig(self, *args, **kwargs)
    monkeypatch.setattr(Study, '_run', _count)
    # the selection never reads the validation images: they are swapped for garbage until the final phase
    st = Study(root, out, cfg)
    st.valid_set = None
    st.select()
    chosen = choose(pd.read_csv(out/'heldout.csv'), cfg['methods'], cfg['top1_slack'])
    st = run_study(root, out, cfg, log=lambda s: None)
    assert [o['epochs'] for o in json.loads((out/'chosen.json').read_text())['head']] == [o['epochs'] for o in chosen]
    sweep = pd.read_csv(out/'sweep.csv')
    n_head = 3*2*3 # ce, hxe alpha=0.1, frame; 2 seeds; 3 decodes
    assert (sweep.regime == 'head').sum() == n_head and (sweep.regime == 'stage').sum() == 3*2*3
    assert set(sweep[sweep.regime == 'head'].train_images) == {6*24} # the held-out images join the final training
    assert set(sweep.valid_images) == {60}
    n = len(trained)
    # held-out scores: every grid point, every epoch, both decodes
    assert len(pd.read_csv(out/'heldout.csv')) == 4*2*2
    run_study(root, out, cfg, log=lambda s: None)
    assert len(trained) == n # all done: nothing trained again
    # a study killed during a training: that training's rows are missing; only it runs again
    sweep.iloc[:-3].to_csv(out/'sweep.csv', index=False)
    run_study(root, out, cfg, log=lambda s: None)
    assert len(trained) == n + 1
    again = pd.read_csv(out/'sweep.csv')
    pd.testing.assert_frame_equal(again.drop(columns='seconds'), sweep.drop(columns='seconds'), atol=1e-5)
    # paired by seed against cross-entropy
    head = again[again.regime == 'head']
    p = paired_differences(head, 'ce', metrics=LIT[:-1]) # hd@20: NaN over 6 classes
    assert set(p.pairs) == {2} and set(p.config) == set(head.config) - {'ce'}
    # the top-1-preserving ranking keeps the argmax's top-1 exactly
    a,t = head[head.decode == 'argmax'],head[head.decode == 'crm_top1']
    assert np.allclose(a.top1_accuracy.values, t.top1_accuracy.values)
    # another setup in the same folder is refused
    with pytest.raises(ValueError, match='another'): Study(root, out, {**cfg, 'holdout_pct':10})
    text = report(out)
    assert 'Bar 1' in text and (out/'goal.csv').exists() and (out/'tradeoff.png').exists()
    assert 'SUBSET' not in text

def test_calibration_and_score_levels():
    from fastai_hier.all import Hierarchy, ClassDistance
    hier = Hierarchy.from_wnids(WNIDS)
    probs = torch.softmax(torch.randn(50, 6), -1)
    targ = torch.randint(0, 6, (50,))
    cal = calibration(probs, targ, hier)
    # at the top level, two groups: the NLL of the target's group is that of the summed probabilities
    top = hier.n_levels - 1
    p = probs
    for i in range(top): p = hier.sum_to_parents(p, i)
    want = -p.gather(1, hier.to_level(targ, top)[:,None]).log().mean().item()
    assert abs(cal[f'nll_{hier.names[top]}'] - want) < 1e-5
    s = score(probs, targ, hier, ClassDistance(hier), 'argmax')
    assert s['top1_accuracy'] == s['fine_accuracy'] and 0 <= s['hier_f1'] <= 1
