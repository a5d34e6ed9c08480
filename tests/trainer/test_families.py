"""trainer/families.py on real (tiny, random) models of every family: family_of, its refusals, position ids
against what `generate` builds, the vision/projector module lists against the models' modules (freeze_vision,
LoRA), placeholder ids, KV-cache bytes against a real cache, and the generic path on a model_type it does not list."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from trainer.families import FAMILIES, UnsupportedModel, family_of

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _small_llava(kind: str):
    """A small random LLaVA-OneVision (SigLIP + Qwen2) or plain LLaVA (CLIP + Llama: a model_type the registry
    does not list, so the generic family) model; the text model's vocabulary holds the image tokens."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                  patch_size=14)
    text = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024)
    if kind == "llava_onevision":
        cfg = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**vision).to_dict(),
                                   text_config=Qwen2Config(**text).to_dict(), image_token_index=300,
                                   video_token_index=301, image_grid_pinpoints=[[28, 28]],
                                   architectures=["LlavaOnevisionForConditionalGeneration"])
        return LlavaOnevisionForConditionalGeneration(cfg).eval()
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**vision).to_dict(), text_config=LlamaConfig(**text).to_dict(),
                      image_token_index=300, architectures=["LlavaForConditionalGeneration"])
    return LlavaForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders of the tiny Qwen-family builds and of the two small LLaVA models."""
    from trainer.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("families")
    out = {f: build_tiny_model(root / f, seed=0, family=f) for f in QWEN}
    for kind in ("llava_onevision", "llava"):
        _small_llava(kind).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("name", [*QWEN, "llava_onevision"])
def test_family_of_each_family(models, name):
    family = family_of(config_of(models[name]))
    assert family is FAMILIES[name] and family.name == name
    assert config_of(models[name])["architectures"][0] in family.architectures


def test_family_of_the_generic_path(models):
    """LLaVA (CLIP + Llama) is not listed, loads with AutoModelForImageTextToText and has 1-D RoPE."""
    from trainer.families import positions_1d

    family = family_of(config_of(models["llava"]))
    assert family.name == "llava" and family.architectures == ("LlavaForConditionalGeneration",)
    assert family.position_ids is positions_1d and "multi_modal_projector" in family.projector_modules
    assert family.placeholder_ids(config_of(models["llava"])) == [300]


@pytest.mark.parametrize("config, says", [
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64}, "text-only"),
    ({"architectures": ["Foo"], "vision_config": {}}, "no model_type"),
    (["not", "a", "config"], "not a JSON object"),
    ({"model_type": "bogus_vlm", "vision_config": {}}, "AutoModelForImageTextToText"),
    ({"model_type": "qwen2_vl", "vision_config": {}, "architectures": ["Qwen2VLForCausalLM"]}, "Qwen2VLForCausalLM"),
    ({"model_type": "llava", "vision_config": {}, "architectures": ["LlavaForCausalLM"]}, "LlavaForCausalLM"),
    ({"model_type": "qwen3_vl_moe", "vision_config": {}, "architectures": ["Qwen3VLMoeForConditionalGeneration"],
      "text_config": {"rope_parameters": {"mrope_section": [24, 20, 20]}}}, "mrope_section"),
])
def test_family_of_refuses_with_a_reason(config, says):
    with pytest.raises(UnsupportedModel) as e:
        family_of(config)
    assert says in e.value.reason and isinstance(e.value, ValueError)


def test_a_text_only_config_is_the_causal_lm_family_for_the_trainer():
    family = family_of({"model_type": "qwen2", "num_hidden_layers": 2}, text_ok=True)
    assert family.name == "causal_lm" and not family.vision and family.placeholder_ids({}) == []


def test_the_module_imports_no_torch():
    code = ("import sys, trainer.families as f; f.family_of({'model_type': 'gemma3', 'vision_config': {}}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ positions, decoding

def _prompts(folder, tmp_path):
    """Two prompts (an image one, a text-only one) through the model's processor, left-padded as HFRollout does."""
    from tests.trainer.synth import make_rows
    from trainer.data import ChatData, pack_prompts
    from trainer.model import load_processor

    processor = load_processor(str(folder), True)
    rows = make_rows(tmp_path / "img", 1) + [{"messages": [{"role": "user", "content": "Name a colour."}]}]
    data = ChatData(rows, [1, 2], processor, True, "training file")
    ids, att, mm, per_token = pack_prompts([data.prompt(0), data.prompt(1)], processor.tokenizer.pad_token_id)
    return processor, ids, att, {**mm, **per_token}


@pytest.mark.parametrize("name", QWEN)
def test_mrope_positions_and_greedy_decode_equal_generate(models, name, tmp_path):
    from transformers import AutoModelForImageTextToText

    from trainer.model import placeholder_token_ids, stop_token_ids
    from trainer.rollout import _cut, decode

    model = AutoModelForImageTextToText.from_pretrained(models[name], dtype=torch.float32).eval()
    processor, ids, att, mm = _prompts(models[name], tmp_path)
    assert not att.all()  # the text prompt is padded
    family = family_of(model.config)
    pos = family.position_ids(model, ids, att, mm)
    ref = model._prepare_position_ids_for_generation(ids, {"attention_mask": att, **mm})  # private: the test only
    assert pos.shape == (4, *ids.shape) and torch.equal(pos, ref)
    assert not torch.equal(pos[1], pos[0])  # the image's rows differ from the text row
    from peft import LoraConfig, get_peft_model  # the trainer's LoRA wrapper: the same positions through it

    wrapped = get_peft_model(AutoModelForImageTextToText.from_pretrained(models[name], dtype=torch.float32),
                             LoraConfig(target_modules=["q_proj"]))
    assert torch.equal(family.position_ids(wrapped, ids, att, mm), ref)

    stop, suppress = stop_token_ids(str(models[name]), processor.tokenizer), placeholder_token_ids(model.config)
    lean = decode(model, ids, att, mm, n=1, max_new_tokens=12, temperature=0.0, top_p=1.0, suppress_ids=suppress,
                  stop_ids=stop, generator=torch.Generator())
    gen = model.generate(input_ids=ids, attention_mask=att, **mm, do_sample=False, max_new_tokens=12,
                         suppress_tokens=suppress, eos_token_id=stop,
                         pad_token_id=processor.tokenizer.pad_token_id)[:, ids.shape[1]:]
    assert [_cut(r, set(stop)) for r in lean.tolist()] == [_cut(r, set(stop)) for r in gen.tolist()]


@pytest.mark.parametrize("name", ["llava_onevision", "llava"])
def test_1d_positions_and_greedy_decode_equal_generate(models, name):
    from transformers import AutoModelForImageTextToText

    from trainer.rollout import _cut, decode

    model = AutoModelForImageTextToText.from_pretrained(models[name], dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 290, (3, 9), generator=g)
    att = torch.ones_like(ids)
    att[1, :4] = att[2, :2] = 0
    family = family_of(model.config)
    pos = family.position_ids(model, ids, att, {})
    assert torch.equal(pos, model._prepare_position_ids_for_generation(ids, {"attention_mask": att}))
    suppress = family.placeholder_ids(model.config)
    assert suppress == ([300, 301] if name == "llava_onevision" else [300])
    lean = decode(model, ids, att, {}, n=1, max_new_tokens=10, temperature=0.0, top_p=1.0, suppress_ids=suppress,
                  stop_ids=[1], generator=torch.Generator())
    gen = model.generate(input_ids=ids, attention_mask=att, do_sample=False, max_new_tokens=10,
                         suppress_tokens=suppress, eos_token_id=[1], pad_token_id=0)[:, ids.shape[1]:]
    assert [_cut(r, {1}) for r in lean.tolist()] == [_cut(r, {1}) for r in gen.tolist()]


# --------------------------------------------------------------------------- modules: freeze_vision, LoRA

TOWER = {  # the vision tower + projector of each model, named independently of trainer/families.py
    "qwen2_vl": ("model.visual.",), "qwen2_5_vl": ("model.visual.",), "qwen3_vl": ("model.visual.",),
    "llava_onevision": ("model.vision_tower.", "model.multi_modal_projector.", "model.image_newline"),
    "llava": ("model.vision_tower.", "model.multi_modal_projector."),
}


@pytest.mark.parametrize("name", list(TOWER))
def test_freeze_vision_freezes_exactly_the_tower_and_projector(models, name):
    from trainer.model import load_model

    family = family_of(config_of(models[name]))
    model = load_model(str(models[name]), True, torch.float32, freeze_vision=True)
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    def found(part):
        return any(part in n.split(".") for n in names)

    if name in FAMILIES:  # every listed part names a real module
        assert all(map(found, family.vision_modules + family.projector_modules))
    else:  # the generic family's common names: some of them
        assert any(map(found, family.vision_modules)) and any(map(found, family.projector_modules))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    tower = {n for n, _ in model.named_parameters() if n.startswith(TOWER[name])}
    assert frozen == tower and tower
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", list(TOWER))
def test_lora_targets_stay_out_of_the_vision_tower(models, name):
    from trainer.hparams import LoraSpec
    from trainer.model import load_model

    plain = load_model(str(models[name]), True, torch.float32)
    family = family_of(plain.config)
    like_targets = [n for n, _ in plain.named_modules() if n.startswith(TOWER[name])
                    and n.rpartition(".")[2] in family.lora_targets]
    model = load_model(str(models[name]), True, torch.float32, lora=LoraSpec())
    adapted = {n.rpartition(".lora_A")[0] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    assert adapted and not any(family.is_vision_module(n) for n in adapted)
    assert len(adapted) == 7 * 2  # 7 projections x 2 layers
    if name in ("qwen2_5_vl", "llava_onevision", "llava"):  # towers with LM-like names: the exclusion matters
        assert like_targets


# --------------------------------------------------------------------------------------- the other facts

@pytest.mark.parametrize("name", list(TOWER))
def test_kv_bytes_per_token_is_the_cache_a_forward_keeps(models, name):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(models[name], dtype=torch.float32).eval()
    ids = torch.randint(3, 250, (1, 7))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    family = family_of(config_of(models[name]))
    assert family.kv_bytes_per_token(config_of(models[name]), 4) * 7 == held
    assert family.kv_bytes_per_token(model.config, 2) * 7 * 2 == held  # the config object reads the same


@pytest.mark.parametrize("name", [*QWEN, "llava_onevision"])
def test_box_conventions_are_iou_input_formats(models, name):
    from transformers import AutoProcessor

    import grader

    family = FAMILIES[name]
    spec = grader.validate_grader({"type": "iou", "name": "b", "input_format": family.box_convention})
    assert spec.input_format.model_dump(exclude_none=True) == {**family.box_convention,
                                                               **({"resize": spec.input_format.resize.model_dump()}
                                                                  if "resize" in family.box_convention else {})}
    if name == "qwen2_5_vl":  # the model folder's own pixel limits (the tiny build's small images)
        processor = AutoProcessor.from_pretrained(models[name])
        conv = family.box_convention_for(processor.image_processor)
        assert conv["resize"] == {"factor": 28, "min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}
    else:
        assert family.box_convention_for(None) == family.box_convention
    assert family.max_positions(config_of(models[name])) == config_of(models[name])["text_config"][
        "max_position_embeddings"]
