"""The Claims table of the common-advice page (`nbs/83_advice_study.md`) and the learning-curve plots, from the claims
study's CSVs in `results/claims/`.

    python scripts/claims_report.py

Reads each dataset's `sweep.csv` (final metrics) and `curves.csv` (every epoch), the transfer probe's `sweep.csv`
(`scripts/transfer_study.py`) and `cache_timing.csv`; writes
`results/claims/claims.md` (which `nbs/83_advice_study.md` includes), `details.md` (every configuration) and
`curves_*.png`.
Every number comes from those CSVs, through the package's `paired_differences` and `reach_runs`.
"""
import json
from pathlib import Path
import pandas as pd
from fastai_hier.cli.report import paired_differences, reach_runs, plot_curves

ROOT = Path(__file__).resolve().parents[1]/'results'/'claims'
# folder, name, fine and coarsest level, top-k columns, the folder of the transfer probe (scripts/transfer_study.py)
DATASETS = [('pets', 'PETS sample', 'breed', 'species', (3, 5), None),
            ('fashion_mnist_pct1', 'Fashion-MNIST 1%', 'class', 'top', (2, 3), 'transfer_pct1'),
            ('fashion_mnist_pct10', 'Fashion-MNIST 10%', 'class', 'top', (2, 3), 'transfer_pct10')]
BASE, FRAC = 'ce', 0.95
# trained after the others, into the same folders (studies/claims_groups.json), paired with the same cross-entropy runs
LATER = {c['config'] for c in json.loads((ROOT.parents[1]/'studies'/'claims_groups.json').read_text())} - {BASE}
MARGIN = 0.02 # "does not change the accuracy": supported only where the interval lies within ±2 points

def paired_results(ds):
    "Paired differences from cross-entropy: the final metrics, and the epochs and seconds to reach 95% of its final"
    runs, curves = pd.read_csv(ROOT/ds/'sweep.csv'), pd.read_csv(ROOT/ds/'curves.csv')
    _, _, fine, _, _, transfer = [d for d in DATASETS if d[0] == ds][0]
    fine += '_accuracy'
    reach = reach_runs(curves, fine, BASE, FRAC, folds=int(runs.folds.iloc[0]))
    # the loss compares only the configurations that train with the baseline's loss
    same_loss = runs[runs.loss == runs.loss[runs.config == BASE].iloc[0]]
    parts = [paired_differences(runs, BASE), paired_differences(reach, BASE),
             paired_differences(same_loss, BASE, metrics=['valid_loss'])]
    if transfer:
        parts.append(paired_differences(pd.read_csv(ROOT/transfer/'sweep.csv'), BASE, metrics=['transfer_accuracy']))
    res = pd.concat(parts)
    # their seconds and cross-entropy's were measured in different sessions, under different loads: not a pair
    return res[~(res.config.isin(LATER) & (res.metric == 'seconds_to_reach'))].set_index(['config', 'metric'])

def _fmt(r, metric):
    pts = metric.endswith('_accuracy') # accuracies in points
    f = (lambda v: f'{100*v:+.1f}') if pts else (lambda v: f'{v:+.1f} s') if metric == 'seconds_to_reach' else \
        (lambda v: f'{v:+.2f}')
    # "a loss" of the loss reads badly: say which way it went
    word = dict(gain='lower', loss='higher').get(r.verdict) if metric.endswith('_loss') else r.verdict
    mark = f"**{word}**" if r.verdict != 'tie' else 'tie'
    return f"{f(r['diff'])} [{f(r.lo)}, {f(r.hi)}] {mark}"

def _combine(verdicts):
    "Supported where every measure is a gain, not supported where one is a loss, a tie otherwise"
    if 'loss' in verdicts: return 'not supported'
    return 'supported' if all(v == 'gain' for v in verdicts) else 'a tie'

def _same(r):
    "For a claim of no change: supported within the margin, not supported where the interval leaves zero"
    if r.verdict != 'tie': return 'not supported'
    return 'supported' if -MARGIN <= r.lo and r.hi <= MARGIN else 'a tie'

def _cells(p, cfg, measures, reached=None):
    "One dataset's cell: each measure's result, and the verdict the claim gets from them"
    rows = [(label, p.loc[(cfg, m)]) for label,m in measures]
    text = '; '.join(f"{label} {_fmt(r, m)}" for (label,r),(_,m) in zip(rows, measures))
    if reached is not None: text += f" ({reached})"
    return text, [r.verdict for _,r in rows]

COARSE_FIRST = ['ce coarse=1', 'ce coarse=2', 'ce coarse=1 group', 'ce coarse=2 group', 'ce top=1 group=1']
CLAIMS = [
    dict(claim='Coarse-first converges faster', source="users' advice: \"it made it converge way faster\"",
         configs=COARSE_FIRST, kind='reach',
         measured='epochs (and seconds) of training to reach 95% of cross-entropy\'s final fine accuracy',
         differs="they trained a coarse model, then loaded its weights into a fine one and fine-tuned the network; "
                 "ours regroups the head within one fit (`CoarseToFine`): on PETS only the head trains, on a frozen "
                 "body, and the coarse epochs count as epochs; on Fashion-MNIST the coarse level is its top (2 "
                 "groups), or `group`, the middle one (6), or one epoch of each (`top=1 group=1`)"),
    dict(claim='Coarse-first does not change the final accuracy', source="users' advice: \"it did not make the model "
         "achieve better overall performances\"", configs=COARSE_FIRST, kind='same',
         measured=f'final fine accuracy, points (supported only where the interval lies within ±{100*MARGIN:g})',
         differs='as above'),
    dict(claim='A high starting temperature improves top-k', source="users' advice: \"better top-k accuracy at the "
         "expense of a worse loss\"", configs=['ce T=2', 'ce T=4', 'ce T=8'], kind='topk',
         measured='final top-k accuracy, points; the temperature annealed from its start to 1 (`TemperatureSchedule`)',
         differs="their schedule and k are not given; ours anneals over the whole fit, and scores at temperature 1"),
    dict(claim='A high starting temperature worsens the loss', source="users' advice, as above",
         configs=['ce T=2', 'ce T=4', 'ce T=8'], kind='worse',
         measured='final validation cross-entropy, at temperature 1 (supported where it is higher beyond its interval)',
         differs='as above'),
    dict(claim='A high starting temperature learns more transferable features', source="users' advice: \"learn "
         "more transferable feature\"", configs=['ce T=2', 'ce T=4', 'ce T=8'], kind='transfer',
         absent="the body is pretrained and frozen", measured="accuracy of a logistic regression on the frozen body's "
         "features of 4 classes it never saw, points (`scripts/transfer_study.py`)",
         differs="the advice names no test of transfer; ours trains on Fashion-MNIST's 6 clothes and probes its 4 "
                 "goods (sandal, sneaker, ankle boot, bag) on their 4,000 test images; a body never trained probes as "
                 "well (below)"),
    dict(claim='Both combined: coarse-first and temperature 4', source="users' advice, both of the above",
         configs=['ce coarse=1 T=4'], kind='both', measured='epochs to reach 95% (as above) and top-k',
         differs='as above'),
    dict(claim='A breed weight of 20-40% improves both breed and species', source="a blog's sweep of w on PETS "
         "(5 runs each)", configs=['hier w=0.2', 'hier w=0.4'], kind='levels',
         measured='final fine and coarsest accuracy, points (`HierarchicalLoss`, w on the fine level)',
         differs="the blog fine-tuned a pretrained resnet on all 7,390 PETS images on a GPU; we have 370 images, "
                 "train the head on a frozen EfficientNet-Lite0, on a CPU; Fashion-MNIST has three levels (1-w "
                 "shared by two)"),
]

def claims_table(paired) -> str:
    head = ['claim', 'source', 'config', 'measured', *[d[1] for d in DATASETS], 'verdict',
            'where our setting differs']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|'*len(head)]
    for c in CLAIMS:
        for i,cfg in enumerate(c['configs']):
            cells, verdicts = [], []
            for ds,_,fine,coarse,ks,_ in DATASETS:
                needs = 'transfer_accuracy' if c['kind'] == 'transfer' else f'{fine}_accuracy'
                if (cfg, needs) not in paired[ds].index:
                    cells.append(f"– ({c.get('absent', 'no such level')})"); verdicts.append(None)
                    continue
                p, n = paired[ds], paired[ds].loc[(cfg, f'{fine}_accuracy')].pairs
                if c['kind'] in ('reach', 'both'):
                    m = [('epochs', 'epochs_to_reach')] + ([(f'top-{k}', f'top{k}_accuracy') for k in ks]
                                                          if c['kind'] == 'both' else [('seconds', 'seconds_to_reach')])
                    m = [o for o in m if (cfg, o[1]) in p.index]
                    pairs = p.loc[(cfg, 'epochs_to_reach')].pairs
                    reached = f"all {n} pairs reached it" if pairs == n else f"{pairs} of {n} pairs reached it"
                    text, v = _cells(p, cfg, m, reached)
                    # where some runs never reached the mark, it is not reached faster
                    verdicts.append(_combine(v) if pairs == n else 'not supported' if 'loss' in v else 'a tie')
                elif c['kind'] == 'same':
                    r = p.loc[(cfg, f'{fine}_accuracy')]
                    text, verdicts = f"{fine} {_fmt(r, f'{fine}_accuracy')}", verdicts + [_same(r)]
                elif c['kind'] == 'worse': # the claim is of a loss that gets worse
                    r = p.loc[(cfg, 'valid_loss')]
                    text = f"loss {_fmt(r, 'valid_loss')}"
                    verdicts.append(dict(loss='supported', gain='not supported', tie='a tie')[r.verdict])
                else:
                    m = ([(f'top-{k}', f'top{k}_accuracy') for k in ks] if c['kind'] == 'topk' else
                         [('probe', 'transfer_accuracy')] if c['kind'] == 'transfer' else
                         [(fine, f'{fine}_accuracy'), (coarse, f'{coarse}_accuracy')])
                    text, v = _cells(p, cfg, m)
                    verdicts.append(_combine(v))
                cells.append(text + f" → {verdicts[-1]}")
            ran = [(v,d[1]) for v,d in zip(verdicts, DATASETS) if v is not None]
            verdict = ran[0][0] if len({v for v,_ in ran}) == 1 else '; '.join(f"{v} ({name})" for v,name in ran)
            first = i == 0
            lines.append('| ' + ' | '.join([c['claim'] if first else '″', c['source'] if first else '″', f'`{cfg}`',
                                            c['measured'] if first else '″', *cells, verdict,
                                            c['differs'] if first else '″']) + ' |')
    return '\n'.join(lines)

def details_table(paired, ds, fine, ks) -> str:
    "Every configuration of one dataset against cross-entropy"
    p = paired[ds]
    mets = [f'{fine}_accuracy', *[f'top{k}_accuracy' for k in ks], 'epochs_to_reach', 'seconds_to_reach',
            'valid_loss', 'transfer_accuracy']
    mets = [m for m in mets if m in set(p.index.get_level_values(1))]
    lines = ['| config | ' + ' | '.join(f'Δ {m}' for m in mets) + ' |', '|---|' + '---|'*len(mets)]
    for cfg in dict.fromkeys(p.index.get_level_values(0)):
        # not measured, or (the seconds of `LATER`) not paired
        cell = lambda m: '–' if (cfg, m) not in p.index else _fmt(p.loc[(cfg, m)], m) + (
            f" ({p.loc[(cfg, m)].pairs} pairs)" if m == 'epochs_to_reach' else '')
        lines.append(f'| {cfg} | ' + ' | '.join(cell(m) for m in mets) + ' |')
    return '\n'.join(lines)

def details_markdown(paired) -> str:
    "`details.md`: every configuration of each dataset against cross-entropy"
    details = '\n\n'.join(f"### {name}\n\n{details_table(paired, ds, fine, ks)}" for ds,name,fine,_,ks,_ in DATASETS)
    return ("# The claims study: every configuration against cross-entropy\n\nMean difference on the same fold and "
            "seed [95% interval] and verdict; accuracies in points, reach in epochs and seconds of training to "
            f"{FRAC:.0%} of cross-entropy's final fine accuracy, the validation loss of the configurations that train "
            "with cross-entropy, and the transfer probe's accuracy (`scripts/transfer_study.py`). – : not measured, "
            "or not paired.\n\n" + details + '\n')

def setup_lines() -> str:
    res = []
    for ds,name,fine,*_ in DATASETS:
        runs = pd.read_csv(ROOT/ds/'sweep.csv')
        base = runs[runs.config == BASE][f'{fine}_accuracy']
        res.append(f"- {name}: {(ROOT/ds/'summary.md').read_text().splitlines()[0]} Cross-entropy's final {fine} "
                   f"accuracy {base.mean():.3f} over {len(base)} runs.")
    return '\n'.join(res)

def transfer_line() -> str:
    "The transfer probe's runs, and its floor: the probe of a body never trained"
    res = []
    for _,name,*_,transfer in DATASETS:
        if not transfer: continue
        r = pd.read_csv(ROOT/transfer/'sweep.csv')
        m = r.groupby('config', sort=False)[['source_accuracy', 'transfer_accuracy']].mean()
        res.append(f"{name}: {r.seed.nunique()} seeds, fit_one_cycle({r.epochs.iloc[0]}), bs {r.bs.iloc[0]}; "
                   f"cross-entropy's clothes accuracy {m.source_accuracy[BASE]:.3f} and probe accuracy "
                   f"{m.transfer_accuracy[BASE]:.3f}, an untrained body's probe "
                   f"{m.transfer_accuracy['untrained body']:.3f}")
    return ("The transfer probe (`scripts/transfer_study.py`: `fashion_cnn` trained on the 6 clothes, the same share "
            "of their training images as the sweep, then a logistic regression on its frozen features of the 4 goods): "
            + '; '.join(res) + '.')

def later_line() -> str:
    "Why the configurations of the later session are compared in epochs only"
    secs = []
    for ds,name,*_ in DATASETS:
        t = pd.read_csv(ROOT/ds/'sweep.csv').groupby('config').time.mean()
        if LATER & set(t.index):
            secs.append(f"{t[sorted(LATER & set(t.index))].mean():.0f} s a run against {t[BASE]:.0f} s on {name}")
    return (f"The configurations of `studies/claims_groups.json` ({', '.join(f'`{c}`' for c in sorted(LATER))}: "
            "coarse-first at Fashion-MNIST's middle level, which PETS lacks) were trained later, into the same "
            "folders, and are paired with the same cross-entropy runs. The machine was less loaded then (two sweeps "
            "shared its two cores, not three: "
            + '; '.join(secs) + "), so their seconds are not compared with cross-entropy's: only their epochs are.")

def cache_line() -> str:
    t, runs = pd.read_csv(ROOT/'cache_timing.csv').iloc[0], pd.read_csv(ROOT/'pets'/'sweep.csv')
    n = runs.groupby(['fold', 'seed']).ngroups * runs.config.nunique()
    return (f"The PETS study trains heads on a frozen body, so it runs with `FeatureCache` (`--cache`), which gives "
            f"the same metrics (`nbs/35_feature_cache.ipynb` tests that they are equal). The same {t.trainings} "
            f"trainings (the slice `--shard {t.slice}` of its {n}), one run after the other on the same machine, took "
            f"{t.seconds_without_cache:.0f} s without the cache and {t.seconds_with_cache:.0f} s with it "
            f"({t.seconds_without_cache/t.seconds_with_cache:.0f}× faster, the command's start included). The whole "
            f"study took {runs.time.sum()/60:.0f} min of training with the cache (one torch thread, beside the "
            f"Fashion-MNIST sweeps); at the slice's rate it would take about "
            f"{t.seconds_without_cache*n/t.trainings/3600:.0f} hours without it.")

def claims_markdown(paired) -> str:
    "`claims.md`: the Claims table, the runs' setups and the cache's times"
    return (f"Each configuration against cross-entropy on the same fold and seed: the mean difference with its 95% "
            f"interval, and the verdict it allows. \"Reach\" is the first epoch at which a run's fine accuracy "
            f"reached {FRAC:.0%} of cross-entropy's final fine accuracy on the same fold and seed; a pair whose run "
            "never reached it is left out, and the cell says how many reached it. Verdicts: *supported* where every "
            "measure of the claim is a gain beyond its interval, *not supported* where one is a loss beyond its "
            "interval, *a tie* where the intervals allow either.\n\n" + claims_table(paired) +
            "\n\nThe runs:\n\n" + '\n\n'.join([setup_lines(), transfer_line(), later_line(), cache_line()]) + "\n")

def main():
    paired = {ds: paired_results(ds) for ds,*_ in DATASETS}
    shown = ['ce', 'ce coarse=1', 'ce coarse=2', 'ce coarse=1 group', 'ce T=4', 'ce T=8', 'ce coarse=1 T=4',
             'hier w=0.4']
    for ds,name,fine,*_ in DATASETS:
        curves = pd.read_csv(ROOT/ds/'curves.csv')
        plot_curves(curves, f'{fine}_accuracy', [c for c in shown if c in set(curves.config)], ROOT/f'curves_{ds}.png',
                    title=f'{name}: validation {fine} accuracy, mean and 95% band over the runs')
    md = claims_markdown(paired)
    (ROOT/'claims.md').write_text(md)
    (ROOT/'details.md').write_text(details_markdown(paired))
    print(md)

if __name__ == '__main__': main()
