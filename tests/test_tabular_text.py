("The package beyond images: fastai's `tabular_learner` (targets `(bs, 1)`, int8) and `text_classifier_learner` "
 "(targets `(bs,)`) with the loss, the metrics, the callbacks, decoding, hedging, export and interpretation")
from types import SimpleNamespace
import numpy as np, pandas as pd, pytest, torch
from fastai.tabular.all import (Categorify, CategoryBlock, Normalize, ProgressCallback, TabularDataLoaders,
                                tabular_learner)
from fastai.text.all import AWD_LSTM, TextDataLoaders, awd_lstm_clas_config, text_classifier_learner
from fastai.basics import Callback, accuracy, load_learner, set_seed
from fastai_hier.all import *

TREE = {'kitchen': {'cookware': ['pan', 'pot', 'wok'], 'tableware': ['plate', 'bowl']},
        'garden': {'tools': ['spade', 'rake'], 'plants': ['rose', 'fern']}}
HIER = Hierarchy.from_dict(TREE, names=['item', 'kind', 'section'])
N,N_VALID = 240,60

def _catalogue(seed=0):
    "A small product table: price and weight follow the item, with noise; a description that names it among others"
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(HIER), N)
    items = np.array(HIER.vocab)[y]
    words = ['cheap', 'new', 'large', 'small', 'sturdy', 'light']
    return pd.DataFrame({'price': y*2. + rng.normal(0, .7, N), 'weight': (y % 3) + rng.normal(0, .3, N),
                         'colour': rng.choice(['red', 'blue', 'green'], N),
                         'text': [f'{i} ' + ' '.join(rng.choice(words, 3)) for i in items], 'item': items})

@pytest.fixture(scope='module')
def df(): return _catalogue()

def _tabular(df):
    dls = TabularDataLoaders.from_df(df, y_names='item', cat_names=['colour'], cont_names=['price', 'weight'],
                                     procs=[Categorify, Normalize], y_block=CategoryBlock(vocab=HIER.vocab),
                                     valid_idx=list(range(N-N_VALID, N)), bs=32)
    def learner(**kwargs):
        set_seed(0)
        return tabular_learner(dls, layers=[32], loss_func=HierarchicalLoss(HIER), **kwargs).remove_cb(ProgressCallback)
    def predict(learn, row):
        "The decoded row's label (a node's name with hedging), the decoded index and the probabilities"
        res,idx,probs = learn.predict(row)
        return res.decode().items['item'].iloc[0],idx,probs
    return SimpleNamespace(dls=dls, learner=learner, predict=predict, item=df.iloc[-1], targ_shape=(N_VALID, 1),
                           head='layers.1.0', lr=1e-2)

def _text(df):
    # fastai's default tokenizer: spaCy's blank English, which needs no download
    dls = TextDataLoaders.from_df(df, text_col='text', label_col='item', y_block=CategoryBlock(vocab=HIER.vocab),
                                  valid_pct=N_VALID/N, seed=0, bs=16, seq_len=16)
    config = {**awd_lstm_clas_config, 'emb_sz': 16, 'n_hid': 32, 'n_layers': 1}
    def learner(**kwargs):
        set_seed(0)
        return text_classifier_learner(dls, AWD_LSTM, pretrained=False, config=config, loss_func=HierarchicalLoss(HIER),
                                       **kwargs).remove_cb(ProgressCallback)
    def predict(learn, text):
        name,idx,probs = learn.predict(text)
        return str(name),idx,probs
    return SimpleNamespace(dls=dls, learner=learner, predict=predict, item=df.text.iloc[-1], targ_shape=(N_VALID,),
                           head='1.layers.1.2', lr=3e-2)

@pytest.fixture(scope='module', params=['tabular', 'text'])
def app(request, df): return (_tabular if request.param == 'tabular' else _text)(df)

def _last(learn) -> dict:
    "The metrics of the last epoch, by name"
    return dict(zip(learn.recorder.metric_names[1:-1], learn.recorder.values[-1]))

def test_loss_and_metrics(app):
    "Each level's accuracy, the mistake severity and the distance are those of the predictions, under a temperature"
    metrics = [accuracy, *(LevelAccuracy(HIER, n) for n in HIER.names), MistakeSeverity(HIER),
               HierarchicalDistance(HIER, k=2)]
    learn = app.learner(metrics=metrics, cbs=TemperatureSchedule(3.))
    learn.fit(2, app.lr)
    assert learn.loss_func.temperature == 1.
    res,(probs,targ) = _last(learn),learn.get_preds()
    assert targ.shape == app.targ_shape # as fastai gives them: nothing was reshaped on the way in
    for n in HIER.names:
        # the learner decodes by argmax: each level scores the group of the predicted item
        assert res[f'{n}_accuracy'] == pytest.approx(class_level_accuracy(probs.argmax(-1), targ, HIER, n).item(),
                                                     abs=1e-6)
    assert res['item_accuracy'] == pytest.approx(res['accuracy'])
    flat = targ.view(-1)
    assert res['mistake_severity'] == pytest.approx(mistake_severity(probs.argmax(-1), flat, HIER).item())
    # `(n,)` predictions against `(n, 1)` targets: compared item by item, not broadcast to `(n, n)`
    assert mistake_severity(probs.argmax(-1), targ, HIER) == mistake_severity(probs.argmax(-1), flat, HIER)
    assert class_level_accuracy(probs.argmax(-1), targ, HIER, 'item') == pytest.approx(res['accuracy'])
    assert class_level_accuracy(probs.argmax(-1), targ, HIER, 'kind') == class_level_accuracy(probs.argmax(-1), flat,
                                                                                               HIER, 'kind')
    assert res['hier_distance@2'] == pytest.approx(hierarchical_distance(probs, flat, HIER, k=2).item())

class _Widths(Callback):
    "The width of the predictions of each training batch"
    def before_fit(self): self.widths = []
    def after_batch(self):
        if self.training: self.widths.append(self.pred.shape[-1])

def test_coarse_to_fine(app):
    "`CoarseToFine` finds the head's last `nn.Linear`, trains on the kinds first, and the coarse metrics run then"
    widths = _Widths()
    learn = app.learner(metrics=[LevelAccuracy(HIER, 'kind'), LevelAccuracy(HIER, 'item')],
                        cbs=[CoarseToFine(HIER, coarse_epochs=1, level='kind'), widths])
    name,lin = output_linear(learn.model)
    assert (name, lin.out_features) == (app.head, len(HIER))
    learn.fit(2, app.lr)
    n = len(learn.dls.train)
    assert widths.widths == [HIER.n_classes[1]]*n + [len(HIER)]*n
    coarse = dict(zip(learn.recorder.metric_names[1:-1], learn.recorder.values[0]))
    assert 0 <= coarse['kind_accuracy'] <= 1 and coarse['item_accuracy'] is None
    assert 0 <= _last(learn)['item_accuracy'] <= 1
    assert output_linear(learn.model)[1].out_features == len(HIER)

def test_level_weight_schedule(app):
    "The weights move from the sections to the items and kinds at epoch 1, and the loss trains at every stage"
    sched = LevelWeightSchedule({0: {'section': 1.}, 1: {'kind': 1., 'item': 1.}})
    learn = app.learner(cbs=sched)
    learn.fit(2, app.lr)
    n = len(learn.dls.train)
    weights = [(h['weight_item'], h['weight_kind'], h['weight_section']) for h in sched.history]
    assert weights == [(0., 0., 1.)]*n + [(.5, .5, 0.)]*n
    assert all(np.isfinite(learn.recorder.values[-1][:2]))

def test_decode_hedge_export_interpret(app, tmp_path):
    "CRM and hedged decoding in `get_preds` and `predict`, `fit_hedge`, `export`/`load_learner`, interpretation"
    learn = app.learner()
    learn.fit(3, app.lr)
    probs,targ,dec = learn.get_preds(with_decoded=True)
    assert (dec == probs.argmax(-1)).all()
    learn.loss_func.decode = 'crm'
    assert (learn.get_preds(with_decoded=True)[2] == crm_decode(probs, HIER)).all()
    name,idx,p = app.predict(learn, app.item)
    assert idx == crm_decode(p[None], HIER)[0] and name == HIER.vocab[idx]
    # a reachable target: at a threshold of 1 every prediction climbs to its section
    target = level_accuracy(probs.log(), targ, HIER, 'section').item()
    fit = learn.fit_hedge(target)
    # `fit_hedge` keeps the threshold and leaves the decode alone: hedging is asked for with `learn.hedged()`
    assert learn.loss_func.decode == 'crm' and fit.accuracy >= target - 1e-9
    def _node_name(i): return HIER.node_name(*HIER.level_and_group(int(i)))
    for t in (fit.threshold, 1.): # at 1, a group: the name of a node that is no class of `dls.vocab`
        with learn.hedged(t): name,idx,p = app.predict(learn, app.item)
        assert idx == hedge_decode(p[None], HIER, t)[0] and name == _node_name(idx)
    assert learn.loss_func.decode == 'crm'
    assert HIER.level_and_group(int(idx))[0] == HIER.n_levels-1
    # a learner exported to hedge for good: its loss decodes by hedging, at the threshold it was given
    learn.loss_func.decode,learn.loss_func.threshold = 'hedge',1.
    learn.export(tmp_path/'learner.pkl')
    again = load_learner(tmp_path/'learner.pkl')
    assert again.loss_func.decode == 'hedge' and again.loss_func.threshold == 1.
    assert app.predict(again, app.item)[0] == name
    learn.loss_func.decode = 'argmax'
    interp = HierarchicalInterpretation.from_learner(learn)
    assert interp.targs.shape == (N_VALID,)
    for n,acc in interp.accuracy_per_level().items():
        assert acc == pytest.approx(class_level_accuracy(probs.argmax(-1), targ, HIER, n).item(), abs=1e-6)
    assert interp.confusion_matrix(level='kind').sum() == N_VALID
    assert interp.mistakes_by_severity().sum() == (probs.argmax(-1) != targ.view(-1)).sum()
