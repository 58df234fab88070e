"`scripts/transfer_study.py`: trained on Fashion-MNIST's clothes, probed on its goods; resumable; one row per run"
import pandas as pd, pytest
from fastai_hier.data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_TREE, fashion_mnist
import transfer_study as ts # scripts/ is on the path (conftest.py)

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"Fashion-MNIST is not installed "
                                f"({FASHION_MNIST_DIR}): apt-get install -y dataset-fashion-mnist")

def test_the_probe_never_sees_a_training_class():
    _, labels, test = fashion_mnist()
    clothes = [c for g in FASHION_MNIST_TREE['Clothes'].values() for c in g]
    goods = [c for g in FASHION_MNIST_TREE['Goods'].values() for c in g]
    (t, v), (pt, pv) = ts.split(labels, test, clothes, 10, 0), ts.split(labels, test, goods, 10, 0)
    # 10% of the 6,000 training images of each class, and the 1,000 test images of each class
    assert (len(t), len(v), len(pt), len(pv)) == (3600, 6000, 2400, 4000)
    assert {labels[i] for i in [*t, *v]} == set(clothes) and {labels[i] for i in [*pt, *pv]} == set(goods)
    assert not set(t) & set(test) and set(v) <= set(test) and set(pv) <= set(test)

def test_runs_resume_and_refuse_another_setup(tmp_path, capsys):
    argv = ['--train-pct', '0.5', '--epochs', '1', '--bs', '16', '--seeds', '0', '--out', str(tmp_path)]
    ts.main(argv)
    df = pd.read_csv(tmp_path/'sweep.csv')
    assert df.config.tolist() == [*ts.CONFIGS, ts.UNTRAINED]
    assert df.transfer_accuracy.between(0.25, 1).all()                # better than chance on the 4 goods
    assert df.source_accuracy[:-1].between(1/6, 1).all() and pd.isna(df.source_accuracy.iloc[-1])   # never trained
    ts.main(argv)
    assert "0 runs to do, 5 already in" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'sweep.csv'), df)
    with pytest.raises(SystemExit, match="another epochs"): ts.main([*argv[:2], '--epochs', '2', *argv[4:]])
