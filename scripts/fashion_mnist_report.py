"""The Fashion-MNIST study across its regimes, from the committed results: `results/fashion_mnist/report.md`, which the
Fashion-MNIST page (`nbs/80_fashion_mnist_study.md`) includes.

    python scripts/fashion_mnist_report.py

For each method and regime: the paired difference in top-1 (class) accuracy from cross-entropy, and the change in
hierarchical distance@5 relative to cross-entropy's mean, each with its 95% interval and verdict, as `fastai-hier sweep`
computed them (paired.csv).
"""
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]/'results'/'fashion_mnist'
REGIMES = {'pct1': '1% (600 images)', 'pct10': '10% (6,000)', 'full': '100% (60,000)'}

def _cell(r, scale=1., pct=False):
    f = (lambda v: f'{100*v*scale:+.1f}%') if pct else (lambda v: f'{100*v:+.2f}')
    v = f"{f(r['diff'])} [{f(r.lo)}, {f(r.hi)}]"
    return v + (f" **{r.verdict}**" if r.verdict != 'tie' else ' tie')

def report() -> str:
    rows, setups = {}, []
    for k,name in REGIMES.items():
        runs, paired = pd.read_csv(ROOT/k/'sweep.csv'), pd.read_csv(ROOT/k/'paired.csv').set_index(['config', 'metric'])
        base = runs[runs.config == runs.config.iloc[0]]
        setups.append(f"- {name}: {(ROOT/k/'summary.md').read_text().splitlines()[0]} CE: class accuracy "
                      f"{base.class_accuracy.mean():.4f}, hier_distance@5 {base['hier_distance@5'].mean():.4f}.")
        for cfg in dict.fromkeys(paired.index.get_level_values(0)):
            rows.setdefault(cfg, {})[f'Δ top-1, {name}'] = _cell(paired.loc[(cfg, 'class_accuracy')])
            rows[cfg][f'Δ dist@5, {name}'] = _cell(paired.loc[(cfg, 'hier_distance@5')],
                                                   1/base['hier_distance@5'].mean(), pct=True)
    df = pd.DataFrame.from_dict(rows, orient='index')
    lines = ['| config | ' + ' | '.join(df.columns) + ' |', '|---|' + '---|'*len(df.columns)]
    lines += [f'| {c} | ' + ' | '.join(r) + ' |' for c,r in df.iterrows()]
    return ('Paired difference from cross-entropy (same seed), mean [95% interval] and verdict: top-1 in accuracy '
            "points, hierarchical distance@5 as a percentage of cross-entropy's (lower is better).\n\n"
            + '\n'.join(lines) + '\n\nThe runs:\n\n' + '\n'.join(setups) + '\n')

if __name__ == '__main__': (ROOT/'report.md').write_text(report())
