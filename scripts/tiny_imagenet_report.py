"""The report of the deep-taxonomy study: `report.md`, its plots and CSVs, from the CSVs the study wrote.

    python scripts/tiny_imagenet_report.py --out results/tiny_imagenet

Reads `setup.json`, `heldout.csv`, `stage_heldout.csv`, `chosen.json` and `sweep.csv` in `--out`; trains nothing.
Writes there `report.md`, `summary.csv` (mean and std per configuration), `paired.csv` (paired differences with 95%
intervals: against cross-entropy, against CRM on cross-entropy, against the frame head), `goal.csv` (the two
bars per configuration), `levels.csv` and `calibration.csv`, and the plots `tradeoff.png`, `levels.png`,
`calibration.png`, `paired.png`.
"""
import argparse, json
from pathlib import Path
import numpy as np, pandas as pd
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastai_hier.cli.report import summarize, paired_differences, summary_markdown, paired_markdown, plot_paired

LIT = ['top1_accuracy', 'mistake_severity', 'hd@1', 'hd@5', 'hd@20']
SHORT = {'top1_accuracy':'top-1', 'mistake_severity':'severity', 'hd@1':'hd@1', 'hd@5':'hd@5', 'hd@20':'hd@20'}

# the anchors: published numbers on their datasets, top-1 / mistake severity / hd@5
ANCHORS = '\n'.join([
    '| dataset (tree), 5 seeds each | cross-entropy | CRM (Karthik et al. 2021) | HAFrame (Liang & Davis, ICCV 2023) '
    '| best reported |',
    '|---|---|---|---|---|',
    '| tieredImageNet-H (608 ImageNet classes, WordNet) | 73.63 / — / 5.69 | 73.54 / — / 4.82 (−15%) '
    '| 74.00 / — / 4.94 (−13%) | CRM |',
    '| iNaturalist-19 (1,010 species, 7 ranks) | 70.66 / — / 1.98 | — | 70.89 / — / 1.14 (−42%) '
    '| BiLT 70.98 / — / 1.13 |',
    '| CIFAR-100 (5 levels) | 77.85 / 2.35 / 2.25 | 77.80 / 2.31 / 1.15 | 77.71 / 2.21 / 1.11 '
    '| BiLT 77.77 / 2.17 / 1.08 |',
    ]) + """

Theirs, on their datasets, with their networks trained whole (CIFAR-100, other methods: HXE 72.76 / 2.40 / 2.05, soft
labels 74.34 / 2.33 / 1.29). Sources: the BiLT paper's tables (AAAI 2025, on HAFrame's code); the Hier-COS authors'
per-seed outputs. Not comparable number for number with the table above: other data, other trees, other bodies."""

def goal_table(df:pd.DataFrame, baseline:str='ce', crm:str='ce +crm', frame:str=None,
               slack:float=0.005) -> pd.DataFrame:
    ("The two bars per configuration: top-1 within `slack` of `baseline`'s (the paired interval's low end), hd@5 "
     "at least 30% and mistake severity at least 10% below `baseline`'s, each beyond the paired intervals against CRM "
     "on cross-entropy (`crm`) and the frame head (`frame`)")
    base = df[df.config == baseline][LIT].mean()
    pb = paired_differences(df, baseline, metrics=LIT)
    rivals = {n:paired_differences(df, n, metrics=LIT) for n in (crm, frame) if n is not None and n in set(df.config)}
    rows = []
    for cfg,d in df.groupby('config', sort=False):
        if cfg == baseline: continue
        p = pb[pb.config == cfg].set_index('metric')
        r = dict(config=cfg, top1=d.top1_accuracy.mean(), top1_diff=p.at['top1_accuracy', 'diff'],
                 top1_lo=p.at['top1_accuracy', 'lo'], top1_ok=bool(p.at['top1_accuracy', 'lo'] >= -slack))
        for m,need in (('hd@5', .30), ('mistake_severity', .10)):
            rel = d[m].mean()/base[m] - 1
            r[f'{m}_rel'] = rel
            beats = []
            for name,pr in rivals.items():
                if name == cfg: continue
                q = pr[(pr.config == cfg) & (pr.metric == m)]
                beats.append(bool(len(q) and q.hi.iloc[0] < 0))
            r[f'{m}_beats_rivals'] = all(beats)
            r[f'{m}_goal'] = bool(r['top1_ok'] and rel <= -need and all(beats))
        rows.append(r)
    return pd.DataFrame(rows)

def _pct(v): return f'{100*v:+.1f}%'

def goal_markdown(g:pd.DataFrame, crm:str, frame:str) -> str:
    lines = ["| config | top-1 | Δ top-1 vs CE [low end of 95%] | hd@5 vs CE | severity vs CE | hd@5 beats "
             f"`{crm}` and `{frame}` | severity beats them | line 1 (hd@5 −30%) | line 2 (severity −10%) |",
             '|---|---|---|---|---|---|---|---|---|']
    yn = {True:'yes', False:'no'}
    for _,r in g.iterrows():
        h,s = 'hd@5','mistake_severity'
        lines.append(f"| {r.config} | {100*r.top1:.2f} | {100*r.top1_diff:+.2f} [{100*r.top1_lo:+.2f}] | "
                     f"{_pct(r[h+'_rel'])} | {_pct(r[s+'_rel'])} | {yn[r[h+'_beats_rivals']]} | "
                     f"{yn[r[s+'_beats_rivals']]} | **{yn[r[h+'_goal']]}** | **{yn[r[s+'_goal']]}** |")
    return '\n'.join(lines)

def lit_markdown(df:pd.DataFrame, paired:pd.DataFrame) -> str:
    "The anchors' layout: mean ± std of top-1 (%), severity, hd@1/5/20, and the paired difference from cross-entropy"
    s = summarize(df[['config', *LIT]].assign(fold=0))
    lines = ['| config | runs | ' + ' | '.join(SHORT[m] for m in LIT)
             + ' | Δ hd@5 vs CE [95%] | Δ severity vs CE [95%] |',
             '|---|---|' + '---|'*(len(LIT)+2)]
    for cfg,r in s.iterrows():
        cells = [(f"{100*r[m+'_mean']:.2f} ± {100*r[m+'_std']:.2f}" if m == 'top1_accuracy' else
                  f"{r[m+'_mean']:.3f} ± {r[m+'_std']:.3f}") for m in LIT]
        def _d(m):
            q = paired[(paired.config == cfg) & (paired.metric == m)]
            if not len(q): return '(baseline)'
            q = q.iloc[0]
            return f"{q['diff']:+.3f} [{q.lo:+.3f}, {q.hi:+.3f}] {q.verdict}"
        lines.append(f"| {cfg} | {int(r.runs)} | " + ' | '.join(cells)
                     + f" | {_d('hd@5')} | {_d('mistake_severity')} |")
    return '\n'.join(lines)

def plot_tradeoff(held:pd.DataFrame, chosen:dict, fname):
    ("Held-out top-1 against mistake severity and hd@5 of each grid point at its chosen epochs, one line per method "
     "over its main hyperparameter, argmax and CRM")
    ep = {o['point']:o['epochs'] for o in chosen['head']}
    h = held[held.apply(lambda r: ep.get(r.point) == r.epoch, axis=1)]
    g = h.groupby(['method', 'point', 'opts', 'decode'], sort=False)[LIT].mean().reset_index()
    fig,axs = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax,m in zip(axs, ('mistake_severity', 'hd@5')):
        for i,(meth,d) in enumerate(g.groupby('method', sort=False)):
            for dec,ls in (('argmax', '-'), ('crm', '--')):
                e = d[d.decode == dec]
                # cross-entropy is one point a decode: a star on top, where the others' lines start from
                style = (dict(marker='*', ms=12, color='k', zorder=5) if meth == 'ce'
                         else dict(marker='o', color=f'C{i}'))
                ax.plot(e[m], 100*e.top1_accuracy, ls=ls, label=f"{meth} ({dec})", **style)
                for _,r in e.iterrows():
                    lab = ','.join(f'{v}' for v in json.loads(r.opts).values())
                    if lab: ax.annotate(lab, (r[m], 100*r.top1_accuracy), fontsize=6)
        ax.set(xlabel=f'{m} (held-out; lower is better)', ylabel='top-1 % (held-out)')
    axs[1].legend(fontsize=6, ncol=2)
    fig.suptitle('Top-1 against mistake severity and hd@5 over each method\'s grid (held-out training images, chosen '
                 'epochs; dashed: CRM)', fontsize=9)
    fig.tight_layout(); fig.savefig(fname, dpi=100); plt.close(fig)

def plot_levels(df:pd.DataFrame, names:list, fname, what:str='accuracy'):
    "Mean accuracy (or NLL and ECE) at every level, finest first, per configuration"
    cols = [f'{n}_accuracy' for n in names] if what == 'accuracy' else None
    fig,axs = plt.subplots(1, 1 if what == 'accuracy' else 2, figsize=(12 if what != 'accuracy' else 7, 4.2),
                           squeeze=False)
    g = df.groupby('config', sort=False)
    for i,(cfg,d) in enumerate(g):
        if what == 'accuracy':
            axs[0][0].plot(range(len(names)), 100*d[cols].mean(), marker='o', ms=3, label=cfg, ls=('-', '--')[i//10])
        else:
            for ax,k in zip(axs[0], ('nll', 'ece')):
                ax.plot(range(len(names)), d[[f'{k}_{n}' for n in names]].mean(), marker='o', ms=3, label=cfg,
                        ls=('-', '--')[i//10])
    for ax,lab in zip(axs[0], ['accuracy % (the decode\'s class and its ancestors)'] if what == 'accuracy'
                      else ['NLL of the target\'s group', 'ECE (15 bins)']):
        ax.set(xlabel='level (0: the classes; up: coarser)', ylabel=lab)
    axs[0][-1].legend(fontsize=6)
    fig.tight_layout(); fig.savefig(fname, dpi=100); plt.close(fig)

def report(out:Path) -> str:
    "Write the report and its files into `out`; returns the markdown"
    out = Path(out)
    setup = json.loads((out/'setup.json').read_text())
    chosen = json.loads((out/'chosen.json').read_text())
    sweep = pd.read_csv(out/'sweep.csv')
    held = pd.read_csv(out/'heldout.csv')
    head = sweep[sweep.regime == 'head']
    stage = sweep[sweep.regime == 'stage']
    names = [c[:-len('_accuracy')] for c in sweep.columns if c.endswith('_accuracy') and c != 'top1_accuracy']
    frame_pt = first_of([o['point'] for o in chosen['head'] if o['final'] and o['method'] == 'frame'])
    frame = frame_pt
    summ = summarize(sweep.assign(config=sweep.regime + ': ' + sweep.config)[['config', *LIT, 'hier_f1']])
    summ.to_csv(out/'summary.csv')
    pairs = []
    for base in ('ce', 'ce +crm', frame):
        if base is None: continue
        p = paired_differences(head, base, metrics=LIT).assign(regime='head', baseline=base)
        pairs.append(p)
    pst = paired_differences(stage, 'ce', metrics=LIT).assign(regime='stage', baseline='ce') if len(stage) else None
    if pst is not None: pairs.append(pst)
    paired = pd.concat(pairs)
    paired.to_csv(out/'paired.csv', index=False)
    pce = paired[(paired.regime == 'head') & (paired.baseline == 'ce')]
    plot_paired(pce, out/'paired.png')
    goal = goal_table(head, 'ce', 'ce +crm', frame)
    if len(stage): goal = pd.concat([goal, goal_table(stage, 'ce', 'ce +crm', frame).assign(
        config=lambda d: 'stage: ' + d.config)])
    goal.to_csv(out/'goal.csv', index=False)
    lev = sweep.groupby(['regime', 'config'], sort=False)[[f'{n}_accuracy' for n in names] + ['hier_f1']].mean()
    lev.to_csv(out/'levels.csv')
    cal = sweep[sweep.decode == 'argmax'].groupby(['regime', 'config'], sort=False)[
        [f'{k}_{n}' for n in names for k in ('nll', 'ece')]].mean()
    cal.to_csv(out/'calibration.csv')
    plot_tradeoff(held, chosen, out/'tradeoff.png')
    plot_levels(head[head.decode != 'crm_top1'], names, out/'levels.png')
    plot_levels(head[head.decode == 'argmax'], names, out/'calibration.png', 'calibration')

    subset = setup.get('subset')
    md = ['# Tiny ImageNet in WordNet\'s tree: the study', '']
    if subset:
        md += [f"> **A SUBSET STUDY, not the full one:** the first {setup['classes']} classes of Tiny ImageNet (sorted "
               f"wnids), all their {setup['train_images']:,} training and {setup['valid_images']:,} validation images. "
               "The tree, its distances and every number are those of this subset; the full study (200 classes) is "
               "the same command without `--classes`.", '']
    md += [f"Body: {setup['body']} (ImageNet weights, {setup['size'][0]} px, mean = std = 0.5), frozen; heads "
           f"trained by a fastai `Learner` on its cached average-pooled features. {setup['classes']} classes in "
           "WordNet's tree "
           f"(`Hierarchy.from_wnids`), distance: MBM's `ilsvrc` (the tree's height minus the depth of the lowest "
           "common ancestor). "
           f"**Every setting (epochs, β, α, γ, the level weights' grid point) was chosen on "
           f"{setup['held_out_images']:,} held-out training images; the {setup['valid_images']:,} validation images "
           "score this table only.** "
           f"Rule: {chosen['rule']}. Final heads trained on all {setup['train_images']:,} training images, "
           f"{head.seed.nunique()} seeds; paired by seed.", '',
           '## The anchors\' layout (validation images)', '',
           'top-1 in %, mistake severity (mean distance of the wrong top-1 predictions), hd@k (mean distance of the '
           'first k ranked classes); each configuration under argmax, CRM (`+crm`), and the top-1-preserving '
           'ranking (`+crm_top1`: the argmax first, the rest by CRM).', '',
           lit_markdown(head, pce), '', '### Theirs', '', ANCHORS, '',
           '## The two bars', '',
           "Line 1: hd@5 at least 30% below cross-entropy's; line 2: mistake severity at least 10% below; each with "
           "top-1 within 0.5 points of cross-entropy's (the low end of the paired 95% interval above −0.5) and "
           f"beyond the paired intervals against CRM on cross-entropy (`ce +crm`) and the frame head (`{frame}`).", '',
           goal_markdown(goal, 'ce +crm', frame), '']
    for line,m,need in (('1', 'hd@5', .30), ('2', 'mistake_severity', .10)):
        hit = goal[goal[f'{m}_goal']]
        md.append(f"- Bar {line} ({m} −{int(need*100)}%): " + (
            'reached by ' + ', '.join(f"{r.config} ({_pct(r[f'{m}_rel'])})" for _,r in hit.iterrows()) if len(hit)
            else f"**not reached**. Best {m} at top-1 within the slack: " + _best_line(goal, m)))
    pcrm = paired[(paired.regime == 'head') & (paired.baseline == 'ce +crm')]
    pcrm = pcrm[pcrm.config.str.endswith('+crm')]
    md += ['', '## Findings', '', *findings(head, paired, frame, stage), '',
           '## Paired differences from cross-entropy (95% intervals)', '', paired_markdown(pce), '',
           '![paired](paired.png)', '',
           '## The loss\'s effect under CRM: each loss + CRM against cross-entropy + CRM', '',
           'The decode\'s effect is `ce +crm` against `ce` above; here the losses are compared with the decode fixed.',
           '', paired_markdown(pcrm) if len(pcrm) else '(no other configuration under CRM)', '',
           '## Top-1 against mistake severity over each method\'s main hyperparameter', '',
           'Held-out training images (the selection\'s scores), each grid point at its chosen epochs; solid: argmax, '
           'dashed: CRM.', '', '![tradeoff](tradeoff.png)', '',
           '## Accuracy at every level and hierarchical F1', '',
           'The decode named in each row picks one class; its ancestors give the prediction at every level (a '
           'coherent path). Levels as `Hierarchy.from_wnids` pads the ragged tree (level 0: the classes).', '',
           _table(lev.loc['head'], 100, names), '', '![levels](levels.png)', '',
           '## NLL and ECE at every level', '',
           'Of the summed probabilities at each level (the same under every decode), one row per trained model.', '',
           _table(cal.loc['head'], 1, names, cal=True), '', '![calibration](calibration.png)', '']
    if len(stage):
        st = chosen.get('stage', [])
        md += ['## Training the body\'s last stage', '',
               f"`blocks.6`, `conv_head`, `bn2` and pooling from the ImageNet weights, trained with the head on the "
               f"cached inputs of `blocks.6` ({stage.train_images.iloc[0]:,} training images: the same share of each "
               f"class; {stage.seed.nunique()} seeds). Epochs chosen on the same held-out images: "
               + ', '.join(f"{o['point']} {o['epochs']}" for o in st) + '.', '',
               lit_markdown(stage, pst), '']
    md += ['## What ImageNet pretraining means here', '',
           "Tiny ImageNet's images are downsampled ImageNet images of 200 ImageNet classes, and the body's weights "
           "were trained on ImageNet-1k, whose training set holds these images (or their originals) with these "
           "labels. The frozen features therefore already separate these classes far better than features learned "
           "from 100,000 64-px images could: the top-1 here measures how much of ImageNet's classifier a linear head "
           "recovers, not generalisation to unseen images, and the validation images may themselves be in ImageNet's "
           "training set. What the study compares, the losses and decodes on the same features, is untouched by "
           "that; their absolute numbers are not comparable with the anchors', which train their networks from "
           "scratch or fine-tune them on the tree's data.", '',
           '## Commands', '', '```',
           'python scripts/extract_tiny_imagenet.py --out FEATURES   # once: the frozen features',
           f"python scripts/tiny_imagenet_study.py --features FEATURES --out {out}" +
           (f" --classes {setup['classes']}" if subset else ''),
           f'python scripts/tiny_imagenet_report.py --out {out}', '```', '']
    text = '\n'.join(md)
    (out/'report.md').write_text(text)
    return text

def _diff(p, cfg, m, rel_to=None):
    "'-0.48 [-0.50, -0.46] (-7.0%)': the paired difference of `cfg` in `m`, relative to `rel_to`"
    q = p[(p.config == cfg) & (p.metric == m)]
    if not len(q): return 'n/a'
    q = q.iloc[0]
    rel = f" ({_pct(q['diff']/rel_to)})" if rel_to else ''
    return f"{q['diff']:+.3f} [{q.lo:+.3f}, {q.hi:+.3f}]{rel}"

def findings(head:pd.DataFrame, paired:pd.DataFrame, frame:str, stage:pd.DataFrame=None) -> list:
    "Plain findings, in numbers, from the paired differences"
    pce = paired[(paired.regime == 'head') & (paired.baseline == 'ce')]
    pcrm = paired[(paired.regime == 'head') & (paired.baseline == 'ce +crm')]
    base = head[head.config == 'ce'][LIT].mean()
    res = [f"- **The decode alone** (CRM on cross-entropy): hd@5 {_diff(pce, 'ce +crm', 'hd@5', base['hd@5'])}, "
           f"mistake severity {_diff(pce, 'ce +crm', 'mistake_severity', base['mistake_severity'])}, top-1 "
           f"{_diff(pce, 'ce +crm', 'top1_accuracy')}. Keeping the argmax first (`ce +crm_top1`): hd@5 "
           f"{_diff(pce, 'ce +crm_top1', 'hd@5', base['hd@5'])} at identical top-1."]
    losses = [c for c in dict.fromkeys(head.config) if c.endswith(' +crm') and c != 'ce +crm']
    def _wins(m):
        return [c for c in losses if ((pcrm.config == c) & (pcrm.metric == m) & (pcrm.hi < 0)).any()]
    for m,what in (('hd@5', 'hd@5'), ('mistake_severity', 'mistake severity')):
        w = _wins(m)
        if w:
            res.append(f"- Under CRM, lower {what} than cross-entropy + CRM beyond the interval: " + '; '.join(
                f"{c} {_diff(pcrm, c, m)} (top-1 {_diff(pcrm, c, 'top1_accuracy')})" for c in w) + '.')
        else:
            res.append(f"- **Nothing beat CRM on cross-entropy** in {what}: no loss + CRM is below `ce +crm` beyond "
                       "its 95% interval.")
    if frame is not None:
        res.append(f"- The frame head (`{frame}`) against cross-entropy, argmax: top-1 "
                   f"{_diff(pce, frame, 'top1_accuracy')}, hd@5 {_diff(pce, frame, 'hd@5', base['hd@5'])}, severity "
                   f"{_diff(pce, frame, 'mistake_severity', base['mistake_severity'])}; with CRM, against "
                   f"`ce +crm`: hd@5 {_diff(pcrm, frame + ' +crm', 'hd@5')}.")
    if stage is not None and len(stage):
        pst = paired[paired.regime == 'stage']
        sb = stage[stage.config == 'ce'][LIT].mean()
        others = [c for c in dict.fromkeys(stage.config) if c != 'ce' and not c.endswith('crm_top1')]
        res.append("- Training the last stage (against its own cross-entropy, argmax): " + '; '.join(
            f"{c}: top-1 {_diff(pst, c, 'top1_accuracy')}, hd@5 {_diff(pst, c, 'hd@5', sb['hd@5'])}"
            for c in others) + '.')
    return res

def first_of(xs): return xs[0] if xs else None

def _best_line(goal, m):
    ok = goal[goal.top1_ok]
    if not len(ok): return 'none within the slack.'
    r = ok.sort_values(f'{m}_rel').iloc[0]
    return f"{r.config} ({_pct(r[f'{m}_rel'])}; beats CRM on cross-entropy and the frame beyond the intervals: " \
           f"{'yes' if r[f'{m}_beats_rivals'] else 'no'})."

def _table(d:pd.DataFrame, scale:float, names:list, cal:bool=False) -> str:
    "A markdown table of the levels' columns of `d`, finest level first"
    if cal:
        cols = [f'{k}_{n}' for n in names for k in ('nll', 'ece')]
        head = [f'{k.upper()} {i}' for i in range(len(names)) for k in ('nll', 'ece')]
    else:
        cols = [f'{n}_accuracy' for n in names] + ['hier_f1']
        head = [str(i) for i in range(len(names))] + ['hF1']
    lines = ['| config | ' + ' | '.join(head) + ' |', '|---|' + '---|'*len(head)]
    for cfg,r in d.iterrows():
        lines.append(f'| {cfg} | ' + ' | '.join(f'{scale*r[c]:.{1 if scale == 100 else 3}f}' if c != 'hier_f1'
                                              else f'{r[c]:.3f}' for c in cols) + ' |')
    return '\n'.join(lines)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path('results/tiny_imagenet'))
    args = p.parse_args()
    print(report(args.out))
