"Fashion-MNIST from Debian's package: the loader, the hierarchy, `--train-pct`, and a short run of the command"
import collections
import pandas as pd, pytest, torch
from fastai_hier.data.fashion_mnist import (FASHION_MNIST_DIR, fashion_mnist, fashion_mnist_hierarchy,
                                            fashion_mnist_root, tensor_dls)
from fastai_hier.cli import main, stratified_subset
from fastai_hier.cli.run import fold_splits

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                reason=f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR}): apt-get install -y "
                                       "dataset-fashion-mnist")

@pytest.fixture(scope='module')
def data(): return fashion_mnist()

def test_loader_counts(data):
    images, labels, test_idx = data
    assert images.shape == (70000, 28, 28) and images.dtype == torch.uint8
    assert list(test_idx) == list(range(60000, 70000))
    assert set(collections.Counter(labels[:60000]).values()) == {6000}
    assert set(collections.Counter(labels[60000:]).values()) == {1000}
    # the first test images, as the dataset's authors list them
    assert labels[60000:60003] == ['Ankle boot', 'Pullover', 'Trouser']

def test_class_order_follows_the_hierarchy(data):
    images, labels, test_idx = data
    hier = fashion_mnist_hierarchy()
    dls = tensor_dls(images, labels, hier.vocab, range(0, 60000, 100), test_idx, bs=32)
    assert list(dls.vocab) == list(hier.vocab) and dls.c == 10
    y = dls.valid.dataset.tensors[1]
    assert [hier.vocab[i] for i in y[:100].tolist()] == labels[60000:60100]   # no class relabelled on the way

def test_hierarchy():
    hier = fashion_mnist_hierarchy()
    assert hier.names == ['class', 'group', 'top'] and hier.n_classes == [10, 6, 2]
    df = hier.df.set_index('class')
    assert list(df.loc[['T-shirt/top', 'Pullover', 'Shirt'], 'group']) == ['Tops']*3
    assert df.loc['Bag', 'group'] == 'Accessories' and df.loc['Bag', 'top'] == 'Goods'
    assert df.loc['Coat', 'group'] == 'Outers' and df.loc['Ankle boot', 'top'] == 'Goods'

@pytest.mark.parametrize('pct,per_class', [(1, 60), (10, 600)])
def test_train_pct_is_stratified_and_follows_the_seed(data, pct, per_class):
    _, labels, test_idx = data
    (_, t0, v0), = fold_splits(labels, 0, 0, test_idx, pct)
    (_, t1, _), = fold_splits(labels, 0, 1, test_idx, pct)
    assert list(v0) == list(test_idx) and not set(t0) & set(test_idx)
    assert set(collections.Counter(labels[i] for i in t0).values()) == {per_class}
    assert t0 != t1 and t0 == fold_splits(labels, 0, 0, test_idx, pct)[0][1]

def test_root_is_decompressed_once(tmp_path):
    root = fashion_mnist_root(dest=tmp_path)
    raw = sorted(p.name for p in (root/'FashionMNIST'/'raw').iterdir())
    assert raw == ['t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte', 'train-images-idx3-ubyte',
                   'train-labels-idx1-ubyte']
    mtime = (root/'FashionMNIST'/'raw'/'train-images-idx3-ubyte').stat().st_mtime
    fashion_mnist_root(dest=tmp_path)
    assert (root/'FashionMNIST'/'raw'/'train-images-idx3-ubyte').stat().st_mtime == mtime

def test_command_trains_on_one_percent(tmp_path):
    main(['train', '--dataset', 'fashion-mnist', '--train-pct', '1', '--epochs', '2', '--bs', '32', '--lr', '1e-2',
          '--out', str(tmp_path)])
    ev = pd.read_csv(tmp_path/'evaluation.csv')
    assert list(ev.columns[:4]) == ['fold', 'class_accuracy', 'group_accuracy', 'top_accuracy']
    # measured 0.6-0.7 and 0.97 from 600 images; chance is 0.1
    assert ev.class_accuracy[0] > 0.5 and ev.top_accuracy[0] > 0.9, ev
    assert len(pd.read_csv(tmp_path/'train.csv')) == 2

@pytest.mark.parametrize('argv,msg', [
    (['--size', '32'], "Fashion-MNIST's images are 28 px"),
    (['--freeze-epochs', '1'], 'fashion_cnn has no pretrained body to freeze'),
    (['--per-breed', '2'], 'leave out --data, --hierarchy, --labels and --per-breed'),
    (['--train-pct', '0'], '--train-pct 0'),
    (['--train-pct', '150'], 'at most 100'),
])
def test_bad_options(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: main(['train', '--dataset', 'fashion-mnist'] + argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err

def test_curves_score_every_epoch_on_every_test_image(data):
    ("`EpochLog(hier, ...)`: each epoch's validation on the 10,000 test images, under each decode, with top-k; the "
     "last epoch is the final model")
    from fastai_hier.cli import train_run, config, make_dls, EpochLog, evaluate
    images, labels, test_idx = data
    hier = fashion_mnist_hierarchy()
    (_, t, v), = fold_splits(labels, 0, 0, test_idx, 1)
    dls = make_dls(images, labels, hier, v, bs=32, train_idx=t)
    log = EpochLog(hier, ['argmax', 'crm'], top_k=[2, 3])
    learn, rows = train_run(dls, hier, config('ce'), 'fashion_cnn', False, epochs=3, freeze_epochs=0, lr=1e-2,
                            quiet=True, log=log)
    curves = pd.DataFrame(log.curves)
    assert len(curves) == 6 and curves.groupby('decode').epoch.apply(list).tolist() == [[0, 1, 2]]*2
    assert curves.seconds.is_monotonic_increasing and (curves.seconds > 0).all()
    assert ((curves.top3_accuracy >= curves.top2_accuracy).all()
            and (curves.top2_accuracy >= curves.class_accuracy).all())
    probs, targ = learn.get_preds()
    assert probs.shape == (10000, 10) and len(targ) == 10000
    last = curves[curves.decode == 'crm'].iloc[-1]
    for k,v in evaluate(probs, targ, hier, 'crm', [2, 3]).items(): assert abs(last[k] - v) < 1e-6, k
