("The offline EfficientNet-Lite0 weights: the key mapping loads strictly into timm's model, and the "
 "weights know ImageNet")
import timm, torch
from PIL import Image
from fastai.vision.all import untar_data, URLs, vision_learner
from fastai_hier.data.backbone import LITE0_ARCH, lite0_port_file, lite0_to_timm, lite0_weights, lite0_pretrained
from fastai_hier.data.pets import pets_files, pet_species

def test_key_mapping_loads_strictly():
    model = timm.create_model(LITE0_ARCH, pretrained=False)
    port = torch.load(lite0_port_file(), map_location='cpu')
    mapped = lite0_to_timm(port, model)
    assert len(mapped) == len(port) == len(model.state_dict())
    model.load_state_dict(mapped, strict=True)   # every key of timm's model, each of the right shape
    for k,v in model.state_dict().items(): assert torch.equal(v, mapped[k]), k

def test_converted_once(tmp_path):
    dest = lite0_weights(tmp_path/'w.pth')
    stamp = dest.stat().st_mtime_ns
    assert lite0_weights(dest).stat().st_mtime_ns == stamp   # found, not converted again
    assert not list(tmp_path.glob('*.tmp'))

def test_imagenet_classes_of_the_sample():
    ("ImageNet's top-1 class is a cat (281-285) for the cats and a dog (151-268) for the dogs, on at "
     "least 90% of the sample")
    model = timm.create_model(LITE0_ARCH, pretrained=True,
                              pretrained_cfg_overlay=lite0_pretrained()['pretrained_cfg_overlay']).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5)
    tfm = timm.data.create_transform(**cfg)
    files = pets_files(untar_data(URLs.PETS)/'images')
    right = 0
    with torch.no_grad():
        for i in range(0, len(files), 64):
            batch = files[i:i+64]
            top = model(torch.stack([tfm(Image.open(f).convert('RGB')) for f in batch])).argmax(-1)
            for f,c in zip(batch, top.tolist()):
                right += (281 <= c <= 285) if pet_species(f.name) == 'cat' else (151 <= c <= 268)
    assert right/len(files) >= 0.9, f'{right}/{len(files)}'

def test_vision_learner_offline(dls):
    learn = vision_learner(dls, **lite0_pretrained())
    body = learn.model[0].model.state_dict()
    weights = torch.load(lite0_weights())
    for k,v in body.items(): assert torch.equal(v, weights[k]), k
    assert any(type(t).__name__ == 'Normalize' and torch.allclose(t.mean, torch.tensor(.5))
               for t in learn.dls.after_batch.fs)
