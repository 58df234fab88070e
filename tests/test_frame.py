"The frame head as `vision_learner`'s `custom_head` on the PETS sample: training, CRM decoding, export and load"
import tempfile
from pathlib import Path
import torch
from fastai.vision.all import vision_learner, resnet18, accuracy, load_learner, set_seed
from fastai_hier.all import HierarchyFrame, FrameHead, FrameLoss, MistakeSeverity, literature_metrics, crm_decode

def test_frame_head_vision_learner(dls, hier):
    set_seed(0)
    frame = HierarchyFrame(hier, gamma=2.)
    assert frame.dim == len(hier) - 1 # the frame's rank
    learn = vision_learner(dls, resnet18, pretrained=False, custom_head=FrameHead(frame, n_in=512),
                           loss_func=FrameLoss(hier, frame, alpha=0.4, decode='crm'),
                           metrics=[accuracy, MistakeSeverity(hier), *literature_metrics(hier, 'crm_top1', ks=(5,))])
    before = learn.model[1].weight.clone()
    learn.fit(1, 1e-3)
    assert torch.equal(learn.model[1].weight, before) # the frame stays fixed
    vals = dict(zip(learn.recorder.metric_names[1:-1], learn.recorder.values[-1]))
    assert all(torch.isfinite(torch.tensor(v)) for v in vals.values()), vals
    assert 'hd@5_ilsvrc_crm_top1' in vals
    probs,_,decoded = learn.get_preds(with_decoded=True)
    assert torch.equal(decoded, crm_decode(probs, hier))
    with tempfile.TemporaryDirectory() as d:
        learn.export(Path(d)/'frame.pkl')
        learn2 = load_learner(Path(d)/'frame.pkl')
    item = dls.valid_ds.items[0]
    name,pick,p = learn2.predict(item)
    assert pick == crm_decode(p[None], hier)[0] and name == hier.vocab[pick]
    assert torch.allclose(learn2.get_preds(dl=dls.valid)[0], probs, atol=1e-5)
