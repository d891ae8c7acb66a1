import torch

from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.coords import add_noise, normalise, raw_coordinates
from neumeta_pipeline.neumeta.morph import MorphSpec


def test_coordinates_at_odd_widths_enumerate_every_element_once():
    model = build_model("lenet", width=8)
    spec = MorphSpec(model, torch.zeros(1, 1, 28, 28))
    widths = {"conv1": 3, "conv2": 7, "fc1": 13}
    conv2 = next(t for t in spec.tensors if t.name == "conv2.weight")
    raw = raw_coordinates(spec, conv2, widths)
    assert raw.shape == (7 * 3, 6)
    pairs = {(int(r[2]), int(r[1])) for r in raw}
    assert pairs == {(o, i) for o in range(7) for i in range(3)}
    # out-channel major, so the MLP's outputs view directly as (C_out, C_in, k)
    assert raw[:3, 2].tolist() == [0, 0, 0] and raw[:3, 1].tolist() == [0, 1, 2]
    assert raw[0, 0] == conv2.layer and (raw[:, 3:] == torch.tensor([4.0, 3.0, 7.0])).all()
    v = normalise(raw, spec.norm)
    assert (v[:, 1] < 1).all() and (v[:, 2] < 1).all() and torch.allclose(v[0, 4], torch.tensor(3.0 / spec.norm))


def test_bias_coordinates_have_one_row_per_output_channel():
    spec = MorphSpec(build_model("lenet", width=8), torch.zeros(1, 1, 28, 28))
    bias = next(t for t in spec.tensors if t.name == "fc1.bias")
    assert raw_coordinates(spec, bias, {"conv1": 3, "conv2": 5, "fc1": 11}).shape == (11, 6)


def test_noise_is_uniform_within_the_given_width_and_seeded():
    raw = torch.zeros(10000, 6)
    a = add_noise(raw, 1.0, torch.Generator().manual_seed(0))
    b = add_noise(raw, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() >= -0.5 and a.max() <= 0.5 and a.std() > 0.25
    assert add_noise(raw, 0.0, None) is raw


def test_centred_coordinates_sample_the_same_interval_at_every_width():
    model = build_model("lenet", width=8)
    spec = MorphSpec(model, torch.zeros(1, 1, 28, 28))
    conv1 = next(t for t in spec.tensors if t.name == "conv1.weight")
    for width in (2, 4, 8):
        out = normalise(raw_coordinates(spec, conv1, {"conv1": width}), spec.norm, centred=True)[:, 2]
        assert torch.allclose(out, (torch.arange(width) + 0.5) / width)
        assert torch.isclose(out.min() + out.max(), torch.tensor(1.0))  # symmetric about the middle


def test_full_sizes_show_every_width_the_full_channel_counts_and_keep_positions_relative():
    model = build_model("lenet", width=8)
    spec = MorphSpec(model, torch.zeros(1, 1, 28, 28))
    conv2 = next(t for t in spec.tensors if t.name == "conv2.weight")  # (16, 8) channels at full width
    full = spec.channels(conv2, spec.full_widths)[::-1]
    for compression in (0.0, 0.5, 0.75):
        raw = raw_coordinates(spec, conv2, spec.widths(compression))
        seen = normalise(raw, spec.norm, centred=True)
        blind = normalise(raw, spec.norm, centred=True, full_sizes=full)
        assert torch.equal(blind[:, :4], seen[:, :4])  # layer and positions unchanged
        assert torch.all(blind[:, 4] == 8 / spec.norm) and torch.all(blind[:, 5] == 16 / spec.norm)
    assert not torch.equal(seen[:, 4:], blind[:, 4:])  # a narrow width's sizes did change


def test_channel_noise_factors_scale_only_the_channel_columns():
    raw = torch.zeros(5000, 6)
    noisy = add_noise(raw, 1.0, torch.Generator().manual_seed(0), channel_scale=(0.25, 0.5))
    spans = noisy.abs().amax(dim=0)
    assert torch.all(spans[[0, 3, 4, 5]] > 0.49) and spans[1] <= 0.125 and 0.12 < spans[1]
    assert spans[2] <= 0.25 and 0.24 < spans[2]
