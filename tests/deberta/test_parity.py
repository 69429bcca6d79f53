"""Numerical parity with Hugging Face transformers (the oracle), float32 on CPU.

Random reference models are saved with ``save_pretrained``, loaded by ``load_model`` and
compared output by output; then our models are exported and loaded back by transformers.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from deberta import DebertaConfig, build_model, export_hf, load_model  # noqa: E402

TOLERANCE = 1e-5
LENGTH = 40  # longer than the v2 bucket window below, so the log buckets are exercised

V1_FIELDS = dict(
    vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=64, relative_attention=True, max_relative_positions=16, pos_att_type="c2p|p2c",
    position_biased_input=False, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-7,
)
V2_FIELDS = dict(
    vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=64, relative_attention=True, max_relative_positions=32, position_buckets=8,
    pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
    conv_kernel_size=3, conv_act="gelu", type_vocab_size=0, hidden_act="gelu", layer_norm_eps=1e-7,
)
# v2 without the shared key, with absolute positions in the input and a narrower embedding.
V2_UNSHARED_FIELDS = dict(V2_FIELDS, share_att_key=False, position_biased_input=True, embedding_size=24,
                          conv_kernel_size=0, norm_rel_ebd="none", type_vocab_size=2)
# No relative attention at all: content-to-content scores and absolute positions in the input
# (pos_att_type still counts in the scale, 1/sqrt(3d), as transformers counts it).
V2_ABSOLUTE_FIELDS = dict(V2_UNSHARED_FIELDS, relative_attention=False)

VARIANTS = {"v1": ("deberta", V1_FIELDS), "v2": ("deberta-v2", V2_FIELDS),
            "v2_unshared": ("deberta-v2", V2_UNSHARED_FIELDS), "v2_absolute": ("deberta-v2", V2_ABSOLUTE_FIELDS)}
HF_CLASSES = {
    "backbone": "Model", "masked_lm": "ForMaskedLM", "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification", "question_answering": "ForQuestionAnswering",
    "multiple_choice": "ForMultipleChoice",
}


def hf_model(variant: str, head: str):
    num_labels = 2 if head == "question_answering" else 3
    model_type, fields = VARIANTS[variant]
    prefix = "DebertaV2" if model_type == "deberta-v2" else "Deberta"
    config_class = getattr(transformers, prefix + "Config")
    config = config_class(**fields, num_labels=num_labels)
    torch.manual_seed(0)
    model = getattr(transformers, prefix + HF_CLASSES[head])(config).eval()
    # Move every weight away from its initial value (unit LayerNorms, zero biases) so
    # that a weight loaded into the wrong place cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(multiple_choice: bool = False, type_vocab: int = 0):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (3, LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # padding in the attention mask
    mask[2, 11:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    batch = {"input_ids": ids, "attention_mask": mask}
    if type_vocab:
        batch["token_type_ids"] = (torch.arange(LENGTH) >= 20).long().expand(3, LENGTH).contiguous()
    if multiple_choice:
        batch = {k: v.unsqueeze(0) for k, v in batch.items()}  # [1 question, 3 choices, L]
    return batch


def outputs_of(model, batch, head):
    with torch.no_grad():
        out = model(**batch)
    if head == "backbone":
        return [out.last_hidden_state]
    if head == "question_answering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def assert_close(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        difference = (a - b).abs().max().item()
        assert difference <= TOLERANCE, f"max abs difference {difference:.3g}"


CASES = [(v, h) for v in VARIANTS for h in HF_CLASSES if not (h == "multiple_choice" and v == "v1")]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("variant,head", CASES)
def test_load_hf_folder_same_outputs(tmp_path, variant, head, backend):
    reference = hf_model(variant, head)
    reference.save_pretrained(tmp_path)
    ours = load_model(tmp_path, attention_backend=backend).eval()
    assert ours.head == head
    batch = inputs(head == "multiple_choice", VARIANTS[variant][1]["type_vocab_size"])
    assert_close(outputs_of(ours, batch, head), outputs_of(reference, batch, head))


@pytest.mark.parametrize("variant,head", CASES)
def test_exported_folder_loads_in_transformers(tmp_path, variant, head):
    model_type, fields = VARIANTS[variant]
    config = DebertaConfig(**{**fields, "model_type": model_type,
                              "num_labels": 2 if head == "question_answering" else 3})
    torch.manual_seed(2)
    ours = build_model(config, head).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_hf(ours, tmp_path)
    auto = getattr(transformers, "AutoModel" if head == "backbone" else "AutoModel" + HF_CLASSES[head])
    theirs = auto.from_pretrained(tmp_path).eval()
    batch = inputs(head == "multiple_choice", fields["type_vocab_size"])
    assert_close(outputs_of(ours, batch, head), outputs_of(theirs, batch, head))
    # And back: the exported folder loads into ours with the same outputs.
    again = load_model(tmp_path).eval()
    assert_close(outputs_of(again, batch, head), outputs_of(ours, batch, head))


def test_mlm_with_labels_scores_only_the_targets(tmp_path):
    reference = hf_model("v2", "masked_lm")
    reference.save_pretrained(tmp_path)
    ours = load_model(tmp_path).eval()
    batch = inputs()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, [3, 7, 20]] = batch["input_ids"][0, [3, 7, 20]]
    labels[1, 5] = 17
    with torch.no_grad():
        mine = ours(**batch, labels=labels)
        theirs = reference(**batch, labels=labels)
    assert mine.logits.shape == (4, 120)  # only the 4 targets
    assert_close([mine.logits], [theirs.logits[labels != -100]])
    assert abs(mine.loss.item() - theirs.loss.item()) <= TOLERANCE
