"""Loading: the shipped model, timm's pretrained path offline, checkpoint files good and bad."""

import pickle
from pathlib import Path

import huggingface_hub.constants as hf
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from ats_viz import InputError, synthetic
from ats_viz.models import load_model


def test_embedded_loads_offline_with_its_classes_and_preprocessing():
    m = load_model("embedded")
    assert not m.net.training
    assert m.class_names == list(synthetic.CLASSES)
    img = Image.fromarray(synthetic.sample(0)[0])
    x = m.prepare(img)
    assert x.shape == (1, 3, 224, 224)
    # no crop: the picture the model sees is the picture given
    assert abs(m.to_uint8(x[0]).astype(int) - (synthetic.sample(0)[0]).astype(int)).max() <= 1
    assert m.card["heldout"]["images"] > 0
    tuned = load_model("embedded-ats")
    assert tuned.class_names == m.class_names


@pytest.mark.parametrize("name", ["embedded", "embedded-ats"])
def test_the_model_cards_heldout_numbers_are_what_the_engine_gives_today(name):
    """The card's numbers are what users read on the home page and in the README: an engine
    change that moved the tokens ATS keeps on a shipped model would show here first."""
    from ats_viz.synthetic import HELDOUT_SEED
    from ats_viz.train import heldout_metrics

    m = load_model(name)
    with torch.no_grad():
        got = heldout_metrics(m.net)
    card = m.card["heldout"]
    n = card["images"]
    assert n >= 2000 and card["seed"] == HELDOUT_SEED
    # The full model picks no tokens: its counts and GFLOPs are exact arithmetic, and its top-1 could
    # move only where two logits tie within float noise.
    exact = ("images", "seed", "top1_full", "top1_full_ci", "gflops_full")
    assert {k: got[k] for k in exact} == {k: card[k] for k in exact}
    # ATS's picks are nearest-point comparisons, so another CPU's rounding can move a token where
    # two CDF values nearly tie. Measured against float64 arithmetic (another rounding of the same
    # math) on this set: 4 images of 2,000 move a token on the plain model, 13 on the ATS-tuned one,
    # and none changes its top-1 or its first stage's count; the worst moves its final count by 2
    # and its GFLOPs by 0.0012. The tolerance lets 1% of the images (20) move up to 4 tokens in every
    # block from the first stage on and change their correctness: what an engine change moving
    # tokens broadly would exceed many times over.
    moved, tokens = n // 100, 4
    blocks = len(m.net.blocks)
    first = blocks // 4  # ATS's first stage; a token dropped there is missing from every later block
    one_token = m.card["heldout"]["gflops_full"] / (blocks * (m.net.patch_embed.num_patches + 1))
    per_image = tokens * (blocks - first) * one_token * 2  # x 2: attention grows with the count
    assert abs(got["top1_ats"] - card["top1_ats"]) * n <= moved
    assert got["gflops_ats"] == pytest.approx(card["gflops_ats"], abs=moved * per_image / n)
    for key in ("ats_tokens_first_stage", "ats_tokens_final"):
        assert got[key] == pytest.approx(card[key], abs=moved * tokens / n)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224")
    d = tmp_path_factory.mktemp("ckpt")
    save_file(net.state_dict(), str(d / "tiny.safetensors"))
    torch.save(net.state_dict(), d / "tiny.pth")
    return net.state_dict(), d


def test_timm_pretrained_path_with_a_local_file(tiny_weights):
    sd, d = tiny_weights
    m = load_model("timm:deit_tiny_patch16_224", pretrained_file=str(d / "tiny.safetensors"))
    assert torch.equal(m.net.state_dict()["head.weight"], sd["head.weight"])
    assert len(m.class_names) == 1000 and m.class_names[0] != "class 0"  # ImageNet names
    assert m.prepare(Image.new("RGB", (300, 200))).shape == (1, 3, 224, 224)


def test_timm_without_network_says_what_to_do(monkeypatch, tmp_path):
    """Offline with nothing cached, huggingface_hub raises LocalEntryNotFoundError (an OSError,
    its cause OfflineModeIsEnabled): that, and only that kind, becomes the sentence, chained."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="Could not get the pretrained weights of 'deit_tiny_patch16_224'") as got:
        load_model("timm:deit_tiny_patch16_224")
    assert "Without a network" in str(got.value) and "LocalEntryNotFoundError" in str(got.value)
    assert isinstance(got.value.__cause__, LocalEntryNotFoundError)  # the original error, not hidden
    with pytest.raises(InputError, match="timm has no model named 'no_such_vit'"):
        load_model("timm:no_such_vit")
    with pytest.raises(InputError, match="timm has no pretrained weights for 'vit_small_patch16_18x2_224'"):
        load_model("timm:vit_small_patch16_18x2_224")
    with pytest.raises(InputError, match="No weights file at"):
        load_model("timm:deit_tiny_patch16_224", pretrained_file=str(tmp_path / "nowhere.safetensors"))


def _raising(err):
    def create_model(*args, **kwargs):
        raise err
    return create_model


@pytest.mark.parametrize("err", [ConnectionError("connection refused"), TimeoutError("timed out"),
                                 OSError("No space left on device")], ids=type)
def test_a_failed_download_gets_the_sentence_chained_to_its_cause(monkeypatch, err):
    monkeypatch.setattr(timm, "create_model", _raising(err))
    with pytest.raises(InputError, match="Without a network") as got:
        load_model("timm:deit_tiny_patch16_224")
    assert got.value.__cause__ is err


@pytest.mark.parametrize("err", [TypeError("create_model() got an unexpected keyword argument 'pretrained_cfg_overlay'"),
                                 KeyError("hf_hub_id"), RuntimeError("size mismatch for head.weight")], ids=type)
def test_a_bug_or_an_api_change_is_not_called_a_network_problem(monkeypatch, err):
    monkeypatch.setattr(timm, "create_model", _raising(err))
    with pytest.raises(type(err)) as got:
        load_model("timm:deit_tiny_patch16_224")
    assert got.value is err and not isinstance(got.value, InputError)


@pytest.mark.parametrize("name", ["tiny.safetensors", "tiny.pth"])
def test_checkpoint_files_load_for_their_architecture(tiny_weights, name):
    sd, d = tiny_weights
    m = load_model(str(d / name), arch="deit_tiny_patch16_224")
    assert torch.equal(m.net.state_dict()["pos_embed"], sd["pos_embed"])


def test_bad_checkpoint_files(tiny_weights, tmp_path):
    sd, d = tiny_weights
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_model(str(tmp_path / "empty.safetensors"), arch="deit_tiny_patch16_224")
    data = (d / "tiny.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="could not be read"):
        load_model(str(tmp_path / "cut.safetensors"), arch="deit_tiny_patch16_224")
    with pytest.raises(InputError, match="does not fit deit_small_patch16_224"):
        load_model(str(d / "tiny.safetensors"), arch="deit_small_patch16_224")
    with pytest.raises(InputError, match="No checkpoint file"):
        load_model(str(tmp_path / "nowhere.pth"), arch="deit_tiny_patch16_224")
    with pytest.raises(InputError, match="Say which timm architecture"):
        load_model(str(d / "tiny.pth"))


class _Payload:
    """Unpickling this would write a file: the proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path):
    target = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"head.weight": _Payload(str(target))}))
    with pytest.raises(InputError, match="refused"):
        load_model(str(evil), arch="deit_tiny_patch16_224")
    assert not target.exists()


def test_a_checkpoint_of_a_model_the_engine_cannot_run_is_refused_when_loaded(tmp_path):
    """A CNN's checkpoint loads into its architecture fine, but no page could run it: refused at
    load, with the sentence, rather than as an AttributeError on every page."""
    from safetensors.torch import save_file

    path = tmp_path / "cnn.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(path))
    with pytest.raises(InputError, match="ATS needs a timm VisionTransformer; got ResNet"):
        load_model(str(path), arch="resnet10t")


@pytest.mark.parametrize("damage, names", [
    ("nan head", "1 of its weight tensors hold NaN or infinite values (head.weight)"),
    ("inf bias", "1 of its weight tensors hold NaN or infinite values (head.bias)"),
    ("overflowing stem", None),  # finite weights, outputs that overflow: no tensor to name
])
def test_a_model_whose_outputs_are_not_numbers_is_refused_at_load(tiny_weights, tmp_path, damage, names):
    """Issue 24, item 8: such a checkpoint loaded without a word, and pages showed NaN probabilities."""
    sd, _ = tiny_weights
    sd = dict(sd)
    if damage == "nan head":
        sd["head.weight"] = torch.full_like(sd["head.weight"], float("nan"))
    elif damage == "inf bias":
        sd["head.bias"] = sd["head.bias"].clone()
        sd["head.bias"][3] = float("inf")
    else:
        sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"] * 1e37
    save_file(sd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(InputError) as err:
        load_model(str(tmp_path / "odd.safetensors"), arch="deit_tiny_patch16_224")
    said = str(err.value)
    assert said.startswith("'odd.safetensors (deit_tiny_patch16_224)' gives outputs that are not numbers (NaN or "
                           "infinite) on a plain input image")
    assert "refused: train or export it again" in said
    assert (names in said) if names else "weight tensors" not in said
