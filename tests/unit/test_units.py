"""Layer specs, module lookup and the reading of layer outputs into unit scores and maps, by known answers."""

import itertools
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from semlens._util.errors import LayerError
from semlens.model.units import (
    SPEC_KEYS,
    LayerSpec,
    UnitReader,
    attention_weights,
    channels_last,
    guess_prefix_tokens,
    list_layers,
    resolve_module,
    select_output,
    unit_names,
)

# ----------------------------------------------------------------------------------------------
# LayerSpec.parse


def test_parse_name_only_gives_the_defaults():
    spec = LayerSpec.parse("features.7")
    assert spec == LayerSpec(name="features.7", pool="mean", token=None, pick=None, signed=False, sae=None)
    assert spec.prefix_tokens is None
    assert LayerSpec.parse("features.7", default_pool="max").pool == "max"


def test_parse_reads_every_key():
    spec = LayerSpec.parse("blocks.3:pool=max,token=-1,pick=hidden,signed=yes,sae=enc.safetensors,prefix_tokens=5,channels_last=true")
    assert asdict(spec) == {
        "name": "blocks.3",
        "pool": "max",
        "token": -1,
        "pick": "hidden",
        "signed": True,
        "sae": "enc.safetensors",
        "prefix_tokens": 5,
        "channels_last": True,
    }
    with pytest.raises(LayerError, match="channels_last must be true or false"):
        LayerSpec.parse("stages.1:channels_last=nhwc")


def test_parse_option_overrides_default_pool_and_tolerates_spaces_and_empty_items():
    spec = LayerSpec.parse(" head:pool=mean, token=0,,", default_pool="max")
    assert (spec.name, spec.pool, spec.token) == ("head", "mean", 0)


@pytest.mark.parametrize(
    "text,signed", [("x:signed=true", True), ("x:signed=TRUE", True), ("x:signed=1", True), ("x:signed=no", False)]
)
def test_parse_signed_accepts_the_usual_booleans(text, signed):
    assert LayerSpec.parse(text).signed is signed


@pytest.mark.parametrize("text", ["conv:size=3", "conv:max", "conv:pool=max,Token=0"])
def test_parse_bad_key_lists_the_valid_keys(text):
    with pytest.raises(LayerError) as error:
        LayerSpec.parse(text)
    message = str(error.value)
    assert repr(text) in message
    assert all(key in message for key in SPEC_KEYS)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("conv:pool=avg", ["'avg'", "mean", "max"]),
        ("conv:token=cls", ["token", "integer", "'cls'"]),
        ("conv:prefix_tokens=1.5", ["prefix_tokens", "integer", "'1.5'"]),
        ("conv:signed=maybe", ["signed", "true or false", "'maybe'"]),
    ],
)
def test_parse_bad_value_names_the_value_and_the_valid_choices(text, expected):
    with pytest.raises(LayerError) as error:
        LayerSpec.parse(text)
    assert all(part in str(error.value) for part in expected)


@pytest.mark.parametrize("text", ["", "   ", ":pool=max"])
def test_parse_empty_name_explains_the_syntax(text):
    with pytest.raises(LayerError, match=r"no module name; write NAME\[:key=value,...\]"):
        LayerSpec.parse(text)


def test_unit_names_of_signed_layers_append_the_negative_copies():
    assert unit_names(3, signed=False) == ["0", "1", "2"]
    assert unit_names(3, signed=True) == ["0", "1", "2", "0-", "1-", "2-"]
    assert unit_names(0, signed=True) == []


# ----------------------------------------------------------------------------------------------
# finding and listing modules


class Pair(nn.Module):
    """A module that returns a tuple, like attention blocks that also return weights."""

    def forward(self, x):
        return x, x.sum()


class Nothing(nn.Module):
    """A module whose output holds no tensor."""

    def forward(self, x):
        return None


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pair = Pair()
        self.nothing = Nothing()
        self.tokens = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        feature, _ = self.pair(self.features(x))
        self.nothing(feature)
        tokens = self.tokens(feature.flatten(2).transpose(1, 2))  # N, H*W, C
        return self.head(tokens.mean(1))


def test_resolve_module_returns_the_submodule_at_a_dotted_path():
    model = Small()
    assert resolve_module(model, "features.0") is model.features[0]
    assert resolve_module(model, "head") is model.head


def test_resolve_module_unknown_name_lists_close_matches_and_the_layers_command():
    with pytest.raises(LayerError) as error:
        resolve_module(Small(), "feature.0")
    message = str(error.value)
    assert "'feature.0'" in message
    assert "closest: features.0" in message
    assert "semlens.list_layers(model, example_batch) lists all" in message  # in Python's words where Python shows it
    assert "run `semlens layers MODEL`" in error.value.on_the_command_line()


def test_resolve_module_without_close_match_gives_examples_and_rejects_the_root():
    with pytest.raises(LayerError, match="for example: features, features.0"):
        resolve_module(Small(), "zzzzzz")
    with pytest.raises(LayerError, match=r"semlens.list_layers\(model"):
        resolve_module(Small(), "")


def test_list_layers_shows_shapes_unit_counts_and_tuple_outputs():
    infos = list_layers(Small(), torch.randn(2, 3, 5, 5))
    shown = [(info.name, info.type, info.shape, info.units) for info in infos]
    assert shown == [
        ("features", "Sequential", "2x4x5x5", 4),
        ("features.0", "Conv2d", "2x4x5x5", 4),
        ("features.1", "ReLU", "2x4x5x5", 4),
        ("pair", "Pair", "tuple[0]: 2x4x5x5", 4),
        ("nothing", "Nothing", "NoneType", None),
        ("tokens", "Identity", "2x25x4", 4),
        ("head", "Linear", "2x2", 2),
    ]


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block as torchvision writes it: depthwise conv, then norm and MLP channels last, permuted back."""

    def __init__(self, channels: int = 6):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(channels), nn.Linear(channels, 8), nn.GELU(), nn.Linear(8, channels)

    def forward(self, x):
        y = self.fc2(self.act(self.fc1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """timm's: a LayerNorm over the channels of an N,C,H,W map, whose output keeps its channels first."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class HeadsAttention(nn.Module):
    """timm's Attention in short: tokens N,L,C split into heads N,heads,L,dim, which q_norm (here Identity) sees."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv, self.q_norm, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Identity(), nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attention = self.attn_drop((self.q_norm(q) @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj((attention @ v).transpose(1, 2).reshape(x.shape))


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patches, self.attn = nn.Conv2d(3, 8, 4, stride=4), HeadsAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.patches(x).flatten(2).transpose(1, 2)).mean(dim=1)


def test_attention_heads_are_listed_as_unreadable_and_refused_by_the_build():
    from semlens.pipeline.collect import Collector

    model = TinyViT()
    shown = {info.name: (info.shape, info.units) for info in list_layers(model, torch.randn(2, 3, 16, 16))}
    assert shown["attn.q_norm"][1] is None and shown["attn.q_norm"][0].startswith("2x2x16x4 (N,?,A,B with A != B"), shown
    # the attention matrix is square like a conv map (16 queries x 16 keys), but its rows are softmaxes
    assert shown["attn.attn_drop"][1] is None and shown["attn.attn_drop"][0] == "2x2x16x16 (attention weights N,heads,queries,keys: every row sums to 1: not readable)"
    assert shown["attn.proj"] == ("2x16x8", 8) and shown["patches"] == ("2x8x4x4", 8)  # tokens and a conv map stay readable
    for name, shape in (("attn.q_norm", r"\(2, 2, 16, 4\)"), ("attn.attn_drop", r"\(2, 2, 16, 16\)")):
        with pytest.raises(LayerError, match=rf"layer '{name}' \((Identity|Dropout)\) outputs {shape}, not a conv map.*heads"):
            with Collector(model, [LayerSpec.parse(name)], k=2) as collector:
                collector.update(torch.randn(2, 3, 16, 16), torch.arange(2))
    # a conv map whose rows happen to be non-negative is read (only softmax rows sum to 1 everywhere)
    assert not attention_weights(torch.rand(2, 3, 5, 5)) and not attention_weights(torch.full((1, 2, 1, 1), 1.0))
    assert attention_weights(torch.randn(2, 3, 5, 5).softmax(dim=-1))


def test_channels_last_outputs_are_read_only_when_asked_and_refused_otherwise():
    from semlens.pipeline.collect import Collector

    model = nn.Sequential(ConvNeXtBlock(), LayerNorm2d(6))
    shown = {info.name: (info.shape, info.units) for info in list_layers(model, torch.randn(2, 3 * 2, 5, 5))}
    for name, units in (("0.norm", 6), ("0.fc1", 8), ("0.act", 8), ("0.fc2", 6)):  # a LayerNorm and Linears over the last dimension; the GELU by its shape
        assert shown[name][1] == units and shown[name][0].endswith("(N,H,W,C: read with channels_last=true)"), name
    assert shown["0"] == ("2x6x5x5", 6) and shown["0.dwconv"] == ("2x6x5x5", 6) and shown["1"] == ("2x6x5x5", 6)
    assert not channels_last(nn.Conv2d(5, 5, 1), torch.zeros(1, 5, 5, 5))  # channels equal to the side: a conv map
    inputs = torch.randn(3, 6, 5, 5)
    with pytest.raises(LayerError, match=r"layer '0.act' \(GELU\) outputs \(3, 5, 5, 8\) laid out N,H,W,C.*0.act:channels_last=true"):
        with Collector(model, [LayerSpec.parse("0.act")], k=2) as collector:
            collector.update(inputs, torch.arange(3))
    with pytest.raises(LayerError, match=r"layer '0.dwconv' .*channels_last=true reads a map N,H,W,C"):
        with Collector(model, [LayerSpec.parse("0.dwconv:channels_last=true")], k=2) as collector:
            collector.update(inputs, torch.arange(3))
    # read channels last: 8 units (the MLP's hidden channels), each with its 5x5 map and the exact top samples
    with torch.no_grad():
        block = model[0]
        hidden = block.act(block.fc1(block.norm(block.dwconv(inputs).permute(0, 2, 3, 1))))  # N,H,W,C
    with Collector(model, [LayerSpec.parse("0.act:channels_last=true,pool=max")], k=2) as collector:
        collector.update(inputs, torch.arange(3))
    top = collector.results["0.act"]
    expected = hidden.amax(dim=(1, 2)).T.topk(2, dim=1)  # [units, k] over the 3 samples
    assert torch.allclose(top.scores, expected.values) and torch.equal(top.ids, expected.indices)
    reader = UnitReader(LayerSpec.parse("0.act:channels_last=true"))
    scores, maps = reader(hidden)
    assert maps.shape == (3, 8, 5, 5) and torch.equal(maps, hidden.permute(0, 3, 1, 2)) and torch.allclose(scores, hidden.mean(dim=(1, 2)))


class NoneFirst(nn.Module):
    def forward(self, x):
        return None, x


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = NoneFirst()

    def forward(self, x):
        return self.block(x)[1]


def test_list_layers_names_the_tuple_element_it_shows():
    (info,) = list_layers(Wrapper(), torch.randn(2, 3))
    assert info.shape == "tuple[1]: 2x3"


# ----------------------------------------------------------------------------------------------
# select_output


def test_select_output_passes_a_tensor_through_and_takes_the_first_tensor_of_a_tuple():
    first, second = torch.zeros(1), torch.ones(1)
    assert select_output(first, None, "l") is first
    assert select_output((None, first, second), None, "l") is first
    assert select_output({"weights": None, "hidden": second}, None, "l") is second


def test_select_output_pick_by_index_or_key():
    first, second = torch.zeros(1), torch.ones(1)
    assert select_output((first, second), "1", "l") is second
    assert select_output({"hidden": first, "attn": second}, "attn", "l") is second
    assert select_output({"hidden": first, "attn": second}, "1", "l") is second  # index into the values


def test_select_output_pick_on_a_transformers_model_output():
    outputs = pytest.importorskip("transformers.modeling_outputs")
    hidden, pooled = torch.zeros(2, 5, 3), torch.ones(2, 3)
    output = outputs.BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
    assert select_output(output, None, "l") is hidden
    assert select_output(output, "pooler_output", "l") is pooled
    with pytest.raises(LayerError, match="valid keys: last_hidden_state, pooler_output"):
        select_output(output, "logits", "l")


@pytest.mark.parametrize(
    "output,pick,expected",
    [
        ({"hidden": torch.zeros(1), "attn": torch.ones(1)}, "nope", "valid keys: hidden, attn"),
        ({"hidden": torch.zeros(1)}, "3", "valid keys: hidden"),
        ((torch.zeros(1), torch.ones(1), torch.ones(1)), "5", r"valid indices: 0\.\.2"),
        ((torch.zeros(1), torch.ones(1)), "attn", r"valid indices: 0\.\.1"),
        ((torch.zeros(1), None), "1", "selects a NoneType, not a tensor"),
    ],
)
def test_select_output_bad_pick_lists_the_valid_choices(output, pick, expected):
    with pytest.raises(LayerError, match=expected):
        select_output(output, pick, "block")


def test_select_output_without_any_tensor_is_an_error():
    with pytest.raises(LayerError, match="returns tuple with no tensor"):
        select_output((None, 3), None, "block")


# ----------------------------------------------------------------------------------------------
# UnitReader: conv, tokens, linear, signed


def read(spec: str, output, max_map_side: int = 32):
    return UnitReader(LayerSpec.parse(spec), max_map_side)(output)


@pytest.mark.parametrize(
    "spec,pool", [("conv", lambda x: x.mean(dim=(2, 3))), ("conv:pool=max", lambda x: x.amax(dim=(2, 3)))]
)
def test_conv_output_is_pooled_per_channel_and_keeps_its_maps(spec, pool):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6)
    scores, maps = read(spec, x)
    torch.testing.assert_close(scores, pool(x))
    assert torch.equal(maps, x)


def test_large_maps_are_shrunk_by_max_pooling_but_scores_use_the_full_map():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    scores, maps = read("conv", x, max_map_side=32)
    blocks = x.reshape(2, 3, 32, 2, 32, 2).amax(dim=(3, 5))
    assert torch.equal(maps, blocks)
    torch.testing.assert_close(scores, x.mean(dim=(2, 3)))


def test_shrinking_keeps_a_short_side_that_already_fits():
    _, maps = read("conv", torch.randn(1, 2, 64, 16), max_map_side=32)
    assert maps.shape == (1, 2, 32, 16)


def test_tokens_are_mean_pooled_and_the_patch_grid_after_cls_becomes_the_map():
    torch.manual_seed(2)
    x = torch.randn(2, 1 + 9, 4)  # CLS + 3x3 patches, 4 features
    scores, maps = read("blocks.0", x)
    torch.testing.assert_close(scores, x.mean(dim=1))
    expected = x[:, 1:].reshape(2, 3, 3, 4).permute(0, 3, 1, 2)
    assert torch.equal(maps, expected)
    assert maps[1, 2, 0, 1].item() == x[1, 1 + 1, 2].item()  # patch (row 0, col 1) is token 2


def test_token_option_reads_one_token_and_still_maps_the_grid():
    torch.manual_seed(3)
    x = torch.randn(2, 1 + 9, 3)
    scores, maps = read("blocks.0:token=0", x)
    assert torch.equal(scores, x[:, 0])
    assert torch.equal(maps, x[:, 1:].reshape(2, 3, 3, 3).permute(0, 3, 1, 2))
    torch.testing.assert_close(read("blocks.0:pool=max", x)[0], x.amax(dim=1))


def test_token_outside_the_sequence_is_an_error():
    with pytest.raises(LayerError, match="token=5 outside its 5 tokens"):
        read("blocks.0:token=5", torch.randn(1, 5, 3))


def test_explicit_prefix_tokens_override_the_guess():
    torch.manual_seed(4)
    x = torch.randn(1, 5 + 4, 2)  # CLS + 4 registers + 2x2 patches; the guess would say 3x3
    _, guessed = read("blocks.0", x)
    assert guessed.shape == (1, 2, 3, 3)
    _, maps = read("blocks.0:prefix_tokens=5", x)
    assert torch.equal(maps, x[:, 5:].reshape(1, 2, 2, 2).permute(0, 3, 1, 2))


def test_prefix_tokens_leaving_a_non_square_grid_is_an_error():
    with pytest.raises(LayerError, match="7 tokens minus prefix_tokens=0 is not a square patch grid"):
        read("blocks.0:prefix_tokens=0", torch.randn(1, 7, 2))


@pytest.mark.parametrize(
    ("spec", "x", "expected"),
    [
        ("head:token=0", torch.randn(2, 5), r"outputs \(2, 5\), N,C \(linear\): token= only apply to token outputs"),
        ("conv:prefix_tokens=1", torch.randn(1, 2, 3, 3), r"a conv map N,C,H,W: prefix_tokens= only apply"),
        ("conv:token=0,prefix_tokens=1", torch.randn(1, 2, 3, 3), "token= and prefix_tokens= only apply"),
    ],
)
def test_token_keys_on_a_conv_or_linear_output_are_refused_not_ignored(spec, x, expected):
    with pytest.raises(LayerError, match=expected):
        read(spec, x)


def test_tokens_without_a_square_grid_give_scores_but_no_maps():
    x = torch.randn(2, 60, 3)  # no square between 52 and 60 tokens
    scores, maps = read("text.0", x)
    torch.testing.assert_close(scores, x.mean(dim=1))
    assert maps is None


def test_linear_output_scores_are_the_activations_without_maps():
    x = torch.randn(4, 5, dtype=torch.float64)
    scores, maps = read("head", x)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, x.float())
    assert maps is None


def test_signed_layer_doubles_units_with_negated_scores_and_maps():
    torch.manual_seed(5)
    linear = torch.randn(3, 4)
    scores, maps = read("head:signed=true", linear)
    assert torch.equal(scores, torch.cat([linear, -linear], dim=1))
    assert maps is None
    conv = torch.randn(2, 3, 4, 4)
    scores, maps = read("conv:signed=true", conv)
    torch.testing.assert_close(scores, torch.cat([conv.mean(dim=(2, 3)), -conv.mean(dim=(2, 3))], dim=1))
    assert torch.equal(maps, torch.cat([conv, -conv], dim=1))


def test_signed_max_pooling_ranks_the_negative_copy_by_its_most_negative_activation():
    x = torch.tensor([[[[1.0, -5.0], [0.5, 0.2]]]])  # one channel: a strong negative spot and a weak peak
    scores, _ = read("conv:pool=max,signed=true", x)
    assert scores.tolist() == [[1.0, 5.0]]  # unit 0- reads -x, whose maximum is 5


def test_signed_shrunk_map_of_the_negative_copy_keeps_its_negative_peaks():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -3.0, 1.0  # one 2x2 block holds both a negative and a positive spot
    _, maps = read("conv:signed=true", x, max_map_side=2)
    assert maps[0, 1, 0, 0].item() == 3.0  # max pooling of -x keeps the negative spot


def test_five_dimensional_output_is_an_error_that_names_the_readable_layouts():
    with pytest.raises(LayerError, match=r"outputs shape \(1, 2, 3, 4, 5\).*N,C,H,W.*pick="):
        read("video", torch.randn(1, 2, 3, 4, 5))


def test_spec_pick_chooses_the_output_to_read():
    hidden, attn = torch.randn(2, 3), torch.randn(2, 4)
    scores, _ = read("block:pick=attn", {"hidden": hidden, "attn": attn})
    assert torch.equal(scores, attn)


@pytest.mark.parametrize(
    "length,prefix",
    [(196, 0), (197, 1), (261, 5), (50, 1), (9, 0), (10, 1), (4, None), (8, None), (60, None), (3, None), (1, None), (265, None)],
)
def test_guess_prefix_tokens(length, prefix):
    assert guess_prefix_tokens(length) == prefix


def test_guess_prefix_tokens_respects_the_most_prefix_tokens():
    assert guess_prefix_tokens(256 + 9, most=9) == 9


# ----------------------------------------------------------------------------------------------
# sparse autoencoders


D_IN, D_SAE = 4, 6


def sae_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=generator),
        "b_enc": torch.randn(D_SAE, generator=generator),
        "b_dec": torch.randn(D_IN, generator=generator),
    }


def write_sae(path, tensors) -> str:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return str(path)


def expected_features(x: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.relu((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"])


def test_sae_features_of_a_linear_layer(tmp_path):
    tensors = sae_tensors()
    path = write_sae(tmp_path / "sae.safetensors", tensors)
    x = torch.randn(5, D_IN)
    scores, maps = read(f"head:sae={path}", x)
    assert scores.shape == (5, D_SAE)
    torch.testing.assert_close(scores, expected_features(x, tensors))
    assert maps is None


def test_sae_features_of_a_conv_layer_are_encoded_per_position_then_pooled(tmp_path):
    tensors = sae_tensors(1)
    path = write_sae(tmp_path / "sae.safetensors", tensors)
    x = torch.randn(2, D_IN, 3, 5)
    scores, maps = read(f"conv:sae={path}", x)
    per_position = torch.empty(2, D_SAE, 3, 5)
    for n, row, col in itertools.product(range(2), range(3), range(5)):
        per_position[n, :, row, col] = expected_features(x[n, :, row, col], tensors)
    torch.testing.assert_close(maps, per_position)
    torch.testing.assert_close(scores, per_position.mean(dim=(2, 3)))
    torch.testing.assert_close(read(f"conv:sae={path},pool=max", x)[0], per_position.amax(dim=(2, 3)))


def test_sae_weight_stored_as_d_sae_by_d_in_is_transposed(tmp_path):
    tensors = sae_tensors(2)
    path = write_sae(tmp_path / "sae.safetensors", {**tensors, "W_enc": tensors["W_enc"].T})
    x = torch.randn(3, D_IN)
    torch.testing.assert_close(read(f"head:sae={path}", x)[0], expected_features(x, tensors))


def test_sae_without_decoder_bias_encodes_x_directly(tmp_path):
    tensors = sae_tensors(3)
    path = write_sae(tmp_path / "sae.safetensors", {"W_enc": tensors["W_enc"], "b_enc": tensors["b_enc"]})
    x = torch.randn(3, D_IN)
    torch.testing.assert_close(read(f"head:sae={path}", x)[0], F.relu(x @ tensors["W_enc"] + tensors["b_enc"]))


def test_sae_threshold_makes_the_activation_jumprelu(tmp_path):
    tensors = sae_tensors(4)
    threshold = torch.full((D_SAE,), 0.5)
    path = write_sae(tmp_path / "sae.safetensors", {**tensors, "threshold": threshold})
    x = torch.randn(50, D_IN)
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    scores, _ = read(f"head:sae={path}", x)
    torch.testing.assert_close(scores, torch.where(pre > 0.5, pre, torch.zeros_like(pre)))
    assert ((pre > 0) & (pre <= 0.5)).any()  # the threshold zeroed values that ReLU would keep


def test_sae_file_without_encoder_bias_is_an_error_naming_what_it_has(tmp_path):
    path = write_sae(tmp_path / "sae.safetensors", {"W_enc": torch.randn(D_IN, D_SAE)})
    with pytest.raises(LayerError, match="lacks b_enc; it has W_enc"):
        read(f"head:sae={path}", torch.randn(2, D_IN))


def test_sae_weight_that_fits_no_side_of_the_layer_is_an_error(tmp_path):
    path = write_sae(tmp_path / "sae.safetensors", {"W_enc": torch.randn(5, 7), "b_enc": torch.randn(7)})
    with pytest.raises(LayerError, match=r"W_enc \(5, 7\).*does not fit the layer's 4 channels"):
        read(f"head:sae={path}", torch.randn(2, D_IN))


def test_missing_sae_file_is_an_error(tmp_path):
    with pytest.raises(LayerError, match="cannot read SAE weights"):
        read(f"head:sae={tmp_path / 'absent.safetensors'}", torch.randn(2, D_IN))


def test_sae_file_that_is_not_safetensors_is_a_layer_error(tmp_path):
    path = tmp_path / "sae.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(LayerError, match="cannot read SAE weights"):
        read(f"head:sae={path}", torch.randn(2, D_IN))


def test_sae_encoder_bias_of_the_wrong_length_is_a_layer_error(tmp_path):
    path = write_sae(tmp_path / "sae.safetensors", {"W_enc": torch.randn(D_IN, D_SAE), "b_enc": torch.randn(D_SAE + 1)})
    with pytest.raises(LayerError, match="b_enc"):
        read(f"head:sae={path}", torch.randn(2, D_IN))


def test_fingerprint_fields_follow_the_sae_file_content(tmp_path):
    path = write_sae(tmp_path / "sae.safetensors", sae_tensors(5))
    spec = LayerSpec.parse(f"head:sae={path}")
    before = spec.fingerprint_fields()
    assert before["sae"] != path  # the content's hash, not the path
    assert spec.fingerprint_fields() == before
    write_sae(path, sae_tensors(6))
    after = spec.fingerprint_fields()
    assert after["sae"] != before["sae"]
    assert {key: value for key, value in after.items() if key != "sae"} == {
        key: value for key, value in before.items() if key != "sae"
    }
    plain = LayerSpec.parse("head:signed=true")  # channels_last came later: left out where false, so old fingerprints hold
    assert plain.fingerprint_fields() == {key: value for key, value in asdict(plain).items() if key != "channels_last"}
    assert LayerSpec.parse("head:channels_last=true").fingerprint_fields()["channels_last"] is True


def test_pruning_a_layer_read_channels_last_zeroes_its_last_dimension(tmp_path):
    from types import SimpleNamespace

    from semlens.interventions.effects import pruned

    model = nn.Sequential(ConvNeXtBlock(), LayerNorm2d(6))
    captured = []
    handle = model[0].fc2.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach()))  # what the GELU hands on
    with torch.no_grad(), pruned(SimpleNamespace(module=model), {"0.act": [2, 7]}, channels_last=["0.act"]):
        model(torch.randn(2, 6, 5, 5))
    handle.remove()
    hidden = captured[0]  # N,H,W,C with C = 8: hidden channels 2 and 7 off everywhere, nothing else
    assert hidden.shape == (2, 5, 5, 8) and not hidden[..., [2, 7]].any() and hidden[..., [0, 1, 3]].any()
    # an SAE layer read channels last takes the SAE's features out along the last dimension too
    tensors = {**sae_tensors(5), "W_dec": torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(9))}
    path = write_sae(tmp_path / "sae.safetensors", tensors)
    module = nn.Sequential(nn.Linear(3, D_IN))
    x = torch.randn(2, 4, 4, 3)  # N,H,W,C in, N,H,W,D_IN out
    plain = module(x).detach()
    with torch.no_grad(), pruned(SimpleNamespace(module=module), {"0": [1, 4]}, {"0": path}, channels_last=["0"]):
        after = module(x)
    codes = expected_features(plain, tensors)[..., [1, 4]]
    torch.testing.assert_close(after, plain - codes @ tensors["W_dec"][[1, 4]])


def test_pruning_sae_features_takes_their_decoded_share_out_of_the_layer(tmp_path):
    from types import SimpleNamespace

    from semlens.interventions.effects import pruned

    tensors = {**sae_tensors(5), "W_dec": torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(9))}
    path = write_sae(tmp_path / "sae.safetensors", tensors)
    module = nn.Sequential(nn.Conv2d(3, D_IN, 1))
    x = torch.randn(2, 3, 4, 4)
    plain = module(x).detach()
    with pruned(SimpleNamespace(module=module), {"0": [1, 4]}, {"0": path}):
        after = module(x).detach()
    channels_last = plain.movedim(1, -1)
    codes = expected_features(channels_last, tensors)[..., [1, 4]]
    torch.testing.assert_close(after, (channels_last - codes @ tensors["W_dec"][[1, 4]]).movedim(-1, 1))
    torch.testing.assert_close(module(x), plain)  # the hook is gone
    assert not torch.equal(after[:, 1], torch.zeros_like(after[:, 1]))  # not the raw channel with that index zeroed

    no_decoder = write_sae(tmp_path / "encoder-only.safetensors", sae_tensors(5))
    with pytest.raises(LayerError, match="has no W_dec"), pruned(SimpleNamespace(module=module), {"0": [1]}, {"0": no_decoder}):
        module(x)
