"""The engine on a GPU gives what it gives on the CPU (skipped where there is no CUDA)."""

import pytest
import timm
import torch

from ats_viz import ATSConfig, run_ats

from conftest import sharpen

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
              pytest.mark.usefixtures("no_grad")]

SETTINGS = [ATSConfig(method="full"), ATSConfig(k=0.5), ATSConfig(k=0.5, method="topk"),
            ATSConfig(k=0.5, method="random"), ATSConfig(method="tome", r=13),
            ATSConfig(method="evit", keep_rate=0.7)]


@pytest.fixture(scope="module")
def nets():
    torch.backends.cudnn.allow_tf32 = False  # the patch embedding's convolution, exact as on the CPU
    torch.manual_seed(0)
    cpu = sharpen(timm.create_model("deit_small_patch16_224").eval())
    gpu = sharpen(timm.create_model("deit_small_patch16_224").eval())
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


@pytest.mark.parametrize("config", SETTINGS, ids=lambda c: c.label())
def test_cuda_equals_cpu(nets, images, config):
    cpu, gpu = nets
    a = run_ats(cpu, images, config)
    b = run_ats(gpu, images.cuda(), config)
    if config.method == "ats":
        # Scores differ in the last bits between devices, so a point exactly between two CDF
        # values may pick the other: count such images rather than demand none.
        same = (a.token_counts == b.token_counts.cpu()).all(dim=1)
        print(f"ATS: {int(same.sum())} of {len(same)} images keep the same counts on both devices")
        assert same.float().mean() >= 0.75
        a_logits, b_logits = a.logits[same], b.logits.cpu()[same]
    else:
        assert torch.equal(a.token_counts, b.token_counts.cpu())
        a_logits, b_logits = a.logits, b.logits.cpu()
    assert torch.allclose(a_logits, b_logits, atol=1e-3), (a_logits - b_logits).abs().max()
    assert torch.allclose(a.gflops, b.gflops.cpu())


def test_a_cuda_batch_equals_its_images_alone(nets, images):
    _, gpu = nets
    x = images.cuda()
    batch = run_ats(gpu, x, ATSConfig(k=60))
    for i in range(len(x)):
        one = run_ats(gpu, x[i:i + 1], ATSConfig(k=60))
        assert torch.equal(one.token_counts, batch.token_counts[i:i + 1])
        assert torch.allclose(one.logits, batch.logits[i:i + 1], atol=1e-4)
