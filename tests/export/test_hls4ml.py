"""hls4ml (the ``[fpga]`` extra): the QONNX graph converted by hls4ml's QONNX frontend, every
power-of-two weight tensor as hls4ml's shift product, and the C simulation (g++) agreeing with
PyTorch on held-out images."""
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import ConfigError, ExportError

pytest.importorskip("qonnx", reason="the hls4ml flow needs the [fpga] extra: pip install -e '.[fpga]'")
pytest.importorskip("hls4ml", reason="the hls4ml flow needs the [fpga] extra: pip install -e '.[fpga]'")
if shutil.which("g++") is None:
    pytest.skip("hls4ml's C simulation needs g++", allow_module_level=True)

from shiftquant.export.qonnx.hls import exponent_width, shift_layers, to_hls  # noqa: E402


def _small_cnn(act_shift_bits, seed: int = 0):
    """conv (padded) -> BatchNorm -> ReLU -> max pool -> conv -> BatchNorm (onto the residual grid)
    -> ReLU -> global average pool -> linear, BatchNorm as after training (some gains negative)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5).mul_(torch.where(torch.rand_like(m.weight) < 0.2, -1.0, 1.0))
                m.bias.uniform_(-0.3, 0.3)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=act_shift_bits))
    sq.calibrate(model, [torch.randn(64, 1, 12, 12)])
    sq.set_slope(model, 0.0)
    return model


@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_hls4ml_c_simulation_agrees_and_shifts(io_type, tmp_path):
    """A weight-only CNN (power-of-two weights, 8-bit activations), unrolled or streamed: every Conv / Dense takes
    hls4ml's ``weight_exponential`` product, the only multiplications left are BatchNorm's (and
    the global pool's division), and the C simulation gives PyTorch's top-1 on 100 held-out inputs
    (the global pool reads channels-last data: without ``ChannelsLastGlobalPool`` it averaged the
    wrong axis and agreed on 17 % of a VGG's images)."""
    model = _small_cnn(None)
    x = torch.randn(100, 1, 12, 12)
    sq.export_qonnx(model, tmp_path / "m.onnx", x[:1], form="float")
    hls_model = to_hls(tmp_path / "m.onnx", tmp_path / "hls", io_type=io_type)
    layers = [layer for layer in hls_model.get_layers() if layer.class_name in ("Conv2D", "Dense")]
    assert len(layers) == 3 and shift_layers(hls_model) == [layer.name for layer in layers]
    hls_model.compile()
    got = hls_model.predict(np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)))
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.abs(got - ref).max() < 0.05  # BatchNorm in hls4ml's fixed<32,16>
    assert not [layer for layer in hls_model.get_layers() if layer.class_name == "Transpose"]  # input too
    source = (tmp_path / "hls" / "firmware" / "parameters.h").read_text()
    products = [line.split("product::")[1].split("<")[0] for line in source.splitlines() if "product::" in line]
    assert products.count("weight_exponential") == 3
    # every other product is BatchNorm's per-channel scale
    assert products.count("mult") == sum(1 for layer in hls_model.get_layers() if layer.class_name == "BatchNormalization")


def test_power_of_two_activations_are_refused_by_name(tmp_path):
    model = _small_cnn(3)
    sq.export_qonnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 12, 12), form="float")
    with pytest.raises(ExportError, match="power-of-two activations.*act_uniform_bits"):
        to_hls(tmp_path / "m.onnx", tmp_path / "hls")
    with pytest.raises(ConfigError, match="io_type='io_serial'.*'io_parallel' or 'io_stream'"):
        to_hls(tmp_path / "m.onnx", tmp_path / "hls", io_type="io_serial")
    sq.export_qonnx(model, tmp_path / "t.onnx", torch.randn(1, 1, 12, 12))  # the default: MultiThreshold nodes
    with pytest.raises(ExportError, match="thresholds form.*form='float'"):
        to_hls(tmp_path / "t.onnx", tmp_path / "hls")


def test_grouped_convolutions_are_refused_by_name(tmp_path):
    """hls4ml converts plain and depthwise convolutions; 2 groups over 4 channels is neither."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10)).eval()
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=None))
    sq.calibrate(model, [torch.randn(16, 1, 12, 12)])
    sq.set_slope(model, 0.0)
    sq.export_qonnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 12, 12), form="float")
    with pytest.raises(ExportError, match="2 groups over 4 channels.*depthwise"):
        to_hls(tmp_path / "m.onnx", tmp_path / "hls")


def test_the_exponent_type_keeps_every_shifted_bit():
    """Wide enough for every exponent and for the product type hls4ml derives from it."""
    assert exponent_width(np.array([-3, 0]), data_integer_bits=3) == 3  # holds -3; shifts fit the fraction
    assert exponent_width(np.array([-12, -9]), data_integer_bits=2) == 11  # x >> 12 past a 2-bit integer part
    assert exponent_width(np.array([0, 6]), data_integer_bits=8) == 7  # x << 6


def test_a_streamed_flatten_of_a_feature_map_is_refused(tmp_path):
    """A Flatten of a 3-channel feature map keeps a Transpose after the channels-last conversion;
    hls4ml 1.3 streamed it wrongly (6 % top-1 agreement in its C simulation), so io_stream refuses
    it by name and io_parallel converts it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 6 * 6, 10)).eval()
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=None))
    sq.calibrate(model, [torch.randn(64, 3, 8, 8)])
    sq.set_slope(model, 0.0)
    sq.export_qonnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 8, 8), form="float")
    with pytest.raises(ExportError, match="io_stream with a Transpose.*io_parallel"):
        to_hls(tmp_path / "m.onnx", tmp_path / "hls", io_type="io_stream")
    assert not (tmp_path / "hls").exists()  # refused before anything is written
    assert len(shift_layers(to_hls(tmp_path / "m.onnx", tmp_path / "hls"))) == 3
