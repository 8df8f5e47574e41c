import pytest
import torch

from c2p_stream.models import AffectNet, AffectNetDims, SpeechCNN, SpeechCNNDims


def test_affectnet_shapes():
    net = AffectNet(AffectNetDims(k=5))
    logits, latent = net(torch.randn(7, 50))
    assert logits.shape == (7, 5) and latent.shape == (7, 8)
    assert torch.allclose(net.eval().encode(torch.ones(2, 50)), net.eval()(torch.ones(2, 50))[1])


def test_paper_speechcnn_follows_table1_layer_list_with_honest_shapes():
    net = SpeechCNN(SpeechCNNDims(n_frames=99, dim=1024, k=4, preset="paper"))
    conv_depths = [m.out_channels for m in net.conv if isinstance(m, torch.nn.Conv2d)]
    kernels = [m.kernel_size[0] for m in net.conv if isinstance(m, torch.nn.Conv2d)]
    assert conv_depths == [32, 64, 128, 256, 512, 512] and kernels == [7, 7, 5, 5, 3, 3]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.conv) == 4
    with torch.no_grad():
        assert net.conv(torch.zeros(1, 1, 99, 1024)).shape == (1, 512, 1, 58)  # not Table 1's 1x29x512
    fc_sizes = [m.out_features for m in net.fc if isinstance(m, torch.nn.Linear)]
    assert fc_sizes == [1024, 512, 128, 64, 4] and net.fc[0].in_features == 512 * 58


def test_small_speechcnn_runs_on_logmel_shapes():
    net = SpeechCNN(SpeechCNNDims(dim=64, k=4, preset="small"))
    assert net(torch.randn(3, 99, 64)).shape == (3, 4)


def test_speechcnn_rejects_wrong_feature_shape():
    net = SpeechCNN(SpeechCNNDims(dim=64, preset="small"))
    with pytest.raises(ValueError, match=r"expects features \(B, 99, 64\), got \(3, 99, 1024\)"):
        net(torch.randn(3, 99, 1024))


def test_feature_standardisation_uses_stored_stats():
    net = SpeechCNN(SpeechCNNDims(dim=8, preset="small")).eval()
    x = torch.randn(2, 99, 8) * 5 + 3
    reference = net(torch.randn(2, 99, 8))  # warm
    net.set_feature_stats(torch.full((8,), 3.0), torch.full((8,), 5.0))
    shifted = net(x)
    net.set_feature_stats(torch.zeros(8), torch.ones(8))
    assert torch.allclose(shifted, net((x - 3) / 5), atol=1e-5) and reference.shape == shifted.shape
