"""The track model: the reference layer shapes and parameter count, the options, TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tracklstm.models.build import build_model, count_parameters
from tracklstm.models.reference import PhysicalModel, TrackRNN


def test_reference_layers_and_parameter_count() -> None:
    model = build_model({})
    assert count_parameters(model) == 132_038
    lstms = list(model.layers)
    assert [type(m) for m in lstms] == [nn.LSTM, nn.LSTM, nn.LSTM]
    assert [(m.input_size, m.hidden_size, m.num_layers) for m in lstms] == [
        (6, 128, 1),
        (128, 64, 1),
        (64, 32, 1),
    ]
    assert all(m.batch_first and m.bias and not m.bidirectional for m in lstms)
    # PyTorch LSTMs hold 4 gates and two bias vectors per layer.
    assert tuple(lstms[0].weight_ih_l0.shape) == (512, 6)
    assert tuple(lstms[0].weight_hh_l0.shape) == (512, 128)
    assert tuple(lstms[1].weight_ih_l0.shape) == (256, 128)
    assert tuple(lstms[2].weight_hh_l0.shape) == (128, 32)
    assert tuple(lstms[2].bias_ih_l0.shape) == tuple(lstms[2].bias_hh_l0.shape) == (128,)
    assert (model.head.in_features, model.head.out_features) == (32, 6)
    # Keras counts one bias vector per layer: 131,142.
    keras = count_parameters(model) - sum(m.bias_hh_l0.numel() for m in lstms)
    assert keras == 131_142


def test_forward_shapes_and_last_step() -> None:
    torch.manual_seed(0)
    model = TrackRNN(hidden_sizes=(8, 4)).eval()
    x = torch.rand(5, 7, 6)
    y = model(x)
    assert y.shape == (5, 6)
    # The output depends on the whole window (it reads the last step of the last layer).
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(model(x2), y)


def test_options_gru_sizes_dropout() -> None:
    gru = build_model({"cell": "gru", "hidden_sizes": [16, 8]})
    assert all(isinstance(m, nn.GRU) for m in gru.layers)
    assert [m.hidden_size for m in gru.layers] == [16, 8]
    # GRU: 3 gates, two bias vectors.
    expected = 3 * (16 * 6 + 16 * 16 + 2 * 16) + 3 * (8 * 16 + 8 * 8 + 2 * 8) + 8 * 6 + 6
    assert count_parameters(gru) == expected
    drop = build_model({"hidden_sizes": [8], "dropout": 0.5}).train()
    x = torch.rand(64, 7, 6)
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(2)
    b = drop(x)
    assert not torch.allclose(a, b)  # dropout active in training mode
    drop.eval()
    assert torch.equal(drop(x), drop(x))


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"cell": "rnn"}, "model.cell"),
        ({"hidden_sizes": []}, "hidden_sizes"),
        ({"hidden_sizes": [0, 4]}, "model.hidden_sizes"),
        ({"hidden_sizes": 32}, "model.hidden_sizes"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"droput": 0.1}, "model.droput"),
    ],
)
def test_bad_model_settings_name_the_key(settings: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(settings)


def test_scripted_model_matches_eager() -> None:
    torch.manual_seed(0)
    core = build_model({"hidden_sizes": [8, 4]}).eval()
    lo = torch.tensor([-30.0, -30.0, 60.0, -0.5, -0.5, 0.9])
    hi = torch.tensor([30.0, 30.0, 350.0, 0.5, 0.5, 2.7])
    phys = PhysicalModel(core, lo, hi).eval()
    scripted = torch.jit.script(phys)
    x = lo + torch.rand(3, 7, 6) * (hi - lo)
    assert torch.allclose(scripted(x), phys(x), atol=1e-6)
    # Physical in and out: the same as normalizing by hand.
    expected = core((x - lo) / (hi - lo)) * (hi - lo) + lo
    assert torch.allclose(phys(x), expected, atol=1e-5)
