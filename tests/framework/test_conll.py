"""CoNLL files (data=conll): both formats read the same sentences, the vocabulary and tags come
from the training split, entity scores are conlleval's, and unusable files are named."""

import random
from collections import Counter

import pytest
import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from datafiles import make_sentences, write_conll
from rnnlab.data import ConllDataModule
from rnnlab.data.conll import read_conll
from rnnlab.errors import ConfigError
from rnnlab.models import SequenceTagger
from rnnlab.tasks import TaggingTask
from rnnlab.tasks.entities import EntityScores, chunks, is_chunk_scheme


def test_both_formats_read_the_same_sentences_and_tags(tmp_path):
    sentences = make_sentences(20)
    columns = read_conll(write_conll(tmp_path / "a.conll", sentences, "columns"), "data.path")
    conllu = read_conll(write_conll(tmp_path / "a.conllu", sentences, "conllu"), "data.path")
    pos = read_conll(tmp_path / "a.conll", "data.path", tag_column=1)
    assert columns.tokens == conllu.tokens == [[t for t, _, _ in s] for s in sentences]  # -DOCSTART- left out
    assert columns.tags == [[tag for _, _, tag in s] for s in sentences]
    assert conllu.tags == pos.tags == [[p for _, p, _ in s] for s in sentences]
    assert columns.where[0] == "line 3" and conllu.where[0] == "sentence 1 (sent_id s0)"


def test_conllu_multiword_tokens_and_empty_nodes_are_not_words(tmp_path):
    path = tmp_path / "mwt.conllu"
    path.write_text("# sent_id = x\n1-2\tdel\t_\t_\t_\t_\t_\t_\t_\t_\n1\tde\tde\tADP\tIN\t_\t3\tcase\t_\t_\n"
                    "2\tel\tel\tDET\tDT\t_\t3\tdet\t_\t_\n3\tmar\tmar\tNOUN\tNN\t_\t0\troot\t_\t_\n"
                    "3.1\tes\tes\tAUX\t_\t_\t_\t_\t_\t_\n\n")
    assert read_conll(path, "data.path").tokens == [["de", "el", "mar"]]
    assert read_conll(path, "data.path", tag_field="xpos").tags == [["IN", "DT", "NN"]]


def test_conllu_to_tag_needs_no_tags_and_a_partly_tagged_file_names_the_word(tmp_path):
    row = "{}\t{}\t{}\t{}\t_\t_\t_\t_\t_\t_\n"
    untagged = tmp_path / "predict.conllu"
    untagged.write_text("# sent_id = a\n" + row.format(1, "la", "la", "_") + row.format(2, "mar", "mar", "_") + "\n"
                        + row.format("1.1", "es", "es", "_") + "\n"  # a sentence of no words: skipped
                        + row.format(1, "sal", "sal", "_") + "\n")
    sentences = read_conll(untagged, "data.predict_path", labels_required=False)
    assert sentences.tokens == [["la", "mar"], ["sal"]] and sentences.tags is None
    assert sentences.where == ["sentence 1 (sent_id a)", "sentence 3"]
    partly = tmp_path / "partly.conllu"
    partly.write_text(row.format(1, "la", "la", "DET") + row.format(2, "mar", "mar", "NOUN") + "\n"
                      + row.format(1, "sal", "sal", "NOUN") + row.format(2, "fina", "fina", "_") + "\n")
    with pytest.raises(ConfigError) as raised:
        read_conll(partly, "data.predict_path", labels_required=False)
    assert str(raised.value) == (f"data.predict_path: {str(partly)!r}, sentence 2, word 2: 'fina' has no tag, "
                                 "while other tokens of the file have one")


def test_the_vocabulary_and_tag_names_come_from_the_training_split(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("The DET\ncat NOUN\n\nthe DET\ncat NOUN\nsat VERB\n\nA DET\ndog NOUN\n\n" * 4)
    test = tmp_path / "test.conll"
    test.write_text("the DET\nzebra NOUN\n\n")
    data = ConllDataModule(str(train), test_path=str(test), val_fraction=0.25, min_freq=3, lowercase=True)
    data.setup("fit")
    assert len(data.files["train"]) == 9 and len(data.files["val"]) == 3  # 12 sentences, a quarter held out
    counts = Counter(token.lower() for sentence in data.files["train"].tokens for token in sentence)
    assert data.vocab == ["<pad>", "<unk>", *sorted(w for w, n in counts.items() if n >= 3)]
    assert any(n < 3 for n in counts.values()) and "the" in data.vocab
    assert data.tag_names == ["DET", "NOUN", "VERB"]
    ids, tags, lengths = data.splits["test"].tensors
    assert ids.tolist() == [[data.vocab.index("the"), 1]] and tags.tolist() == [[0, 1]] and lengths.tolist() == [2]
    assert data.model_settings() == {"net.vocab_size": len(data.vocab), "net.num_tags": 3,
                                     "tag_names": ["DET", "NOUN", "VERB"]}


def test_the_token_tagger_embeds_ids_with_a_zero_padding_vector():
    tagger = SequenceTagger(None, 8, num_tags=3, dropout=0.0, vocab_size=10, embed_dim=4).eval()
    assert torch.equal(tagger.embedding.weight[0], torch.zeros(4))
    ids = torch.tensor([[3, 4, 0], [5, 0, 0]])
    logits = tagger(ids, lengths=torch.tensor([2, 1]))
    assert logits.shape == (2, 3, 3)
    alone = tagger(torch.tensor([[5]]))  # a padded sentence gives what it gives alone
    assert torch.allclose(logits[1, 0], alone[0, 0], atol=1e-6)
    for args, message in [((None, 8, 3), "exactly one of them; got input_size=None, vocab_size=None"),
                          ((5, 8, 3, 2, 0.0, False, "rnn_tanh", 10), "exactly one of them; got input_size=5")]:
        with pytest.raises(ValueError, match=message):
            SequenceTagger(*args)
    with pytest.raises(ValueError, match=r"expected x ids in \[0, 10\), got id 12"):
        tagger(torch.tensor([[12]]))


def test_the_tagging_contract_takes_feature_or_token_id_batches():
    ids, tags = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)
    assert TaggingTask.batch_problem((ids, tags, torch.tensor([5, 3]))) is None
    assert TaggingTask.batch_problem((torch.zeros(2, 5, 3), tags)) is None
    assert TaggingTask.batch_problem((ids.int(), tags)) == "ids is int32, not int64"
    assert TaggingTask.batch_problem((ids, tags[:, :4])) == "tags has T = 4, ids has T = 5"
    assert TaggingTask.batch_form() == ("(x (B, T, D) float or ids (B, T) int64, tags (B, T) int64"
                                        "[, lengths (B,) int])")


def test_a_taggers_predictions_read_each_sentences_length_and_tags_without_names_are_numbered():
    torch.manual_seed(0)
    task = TaggingTask({"_target_": "rnnlab.models.SequenceTagger", "input_size": None, "vocab_size": 6,
                        "hidden_size": 4, "num_tags": 3, "bidirectional": True, "dropout": 0.0},
                       {"_target_": "torch.optim.Adam", "_partial_": True}).eval()
    ids, tags = torch.tensor([[1, 2, 3], [4, 5, 3]]), torch.zeros(2, 3, dtype=torch.long)  # [4, 5] padded
    probs = task.predict_step((ids, tags, torch.tensor([3, 2])), 0)  # (B, T, K)
    alone = task.predict_step((ids[1:, :2], tags[1:, :2]), 0)  # the padded sentence without its padding
    assert torch.allclose(probs[1, :2], alone[0], atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3))
    assert task.names() == ["0", "1", "2"]


def test_a_taggers_step_scores_are_accuracy_and_macro_f1_over_unpadded_steps():
    task = TaggingTask({"_target_": "rnnlab.models.SequenceTagger", "input_size": 2, "hidden_size": 4, "num_tags": 3},
                       {"_target_": "torch.optim.Adam", "_partial_": True})
    metrics = task.make_metrics()
    preds = torch.tensor([[0, 0, 1, 2, 1], [2, 2, 0, 1, 0]])
    gold = torch.tensor([[0, 1, 1, 2, 2], [2, 0, 0, -100, -100]])  # the padded steps' predictions do not count
    metrics.update(preds, gold)
    scores = {k: v.item() for k, v in metrics.compute().items()}
    f1 = {0: 2 * 2 / (2 * 2 + 1 + 1), 1: 2 * 1 / (2 * 1 + 1 + 1), 2: 2 * 2 / (2 * 2 + 1 + 1)}  # 2TP / (2TP + FP + FN)
    assert scores == pytest.approx({"acc": 5 / 8, "f1": sum(f1.values()) / 3})


@pytest.mark.parametrize("scheme", ["BIO", "BIOES", "IOB1"])
def test_entity_scores_equal_conllevals_as_seqeval_computes_them(scheme):
    rng = random.Random(0)
    prefixes = {"BIO": "BI", "BIOES": "BIES", "IOB1": "I"}[scheme]
    names = ["O"] + [f"{p}-{kind}" for kind in ("PER", "LOC", "ORG") for p in prefixes]
    metric = EntityScores(names)
    gold_all, pred_all = [], []
    for _ in range(40):  # batches of random, often ill-formed, tag sequences
        length = rng.randint(1, 12)
        gold = [rng.randrange(len(names)) for _ in range(length)]
        pred = [g if rng.random() < 0.7 else rng.randrange(len(names)) for g in gold]
        pad = 14 - length
        metric.update(torch.tensor([pred + [0] * pad]), torch.tensor([gold + [-100] * pad]))
        gold_all.append([names[i] for i in gold])
        pred_all.append([names[i] for i in pred])
    scores = metric.compute()
    assert scores["entity_precision"].item() == pytest.approx(precision_score(gold_all, pred_all), abs=1e-6)
    assert scores["entity_recall"].item() == pytest.approx(recall_score(gold_all, pred_all), abs=1e-6)
    assert scores["entity_f1"].item() == pytest.approx(f1_score(gold_all, pred_all), abs=1e-6)


def test_chunks_and_chunk_schemes():
    assert chunks(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"]) == {
        ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)}
    assert chunks(["S-PER", "B-LOC", "E-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 3)}
    assert is_chunk_scheme(["B-PER", "I-PER", "O"]) and is_chunk_scheme(["U-X", "L-X", "O"])
    assert not is_chunk_scheme(["NOUN", "VERB"]) and not is_chunk_scheme(["O"]) and not is_chunk_scheme(None)


def test_chunks_read_bilou_types_with_hyphens_and_other_tags_as_o():
    assert chunks(["U-PER", "B-LOC", "L-LOC", "L-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 3)}
    assert chunks(["B-per-name", "I-per-name", "B-geo-nam"]) == {("per-name", 0, 1), ("geo-nam", 2, 2)}
    assert chunks(["NOUN", "B-PER", "I-PER", "X-", "I-PER"]) == {("PER", 1, 2), ("PER", 4, 4)}


def test_entity_scores_are_zero_not_nan_without_predicted_or_gold_chunks():
    metric = EntityScores(["O", "B-PER", "I-PER"])
    metric.update(torch.tensor([[0, 0, 0]]), torch.tensor([[1, 2, -100]]))  # nothing predicted
    assert {k: v.item() for k, v in metric.compute().items()} == {
        "entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}
    metric.reset()
    metric.update(torch.tensor([[1, 0]]), torch.tensor([[0, 0]]))  # nothing to find
    assert {k: v.item() for k, v in metric.compute().items()} == {
        "entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


def test_entity_counts_from_two_processes_are_summed():
    """DDP's sync reduces each process's counts as merge_state does: the scores of two halves
    merged are the scores of the whole."""
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    preds = torch.tensor([[1, 2, 0, 3], [3, 0, 1, 0], [1, 1, 0, 0]])
    gold = torch.tensor([[1, 2, 0, 0], [3, 0, 1, 2], [0, 1, -100, -100]])
    whole, first, second = EntityScores(names), EntityScores(names), EntityScores(names)
    whole.update(preds, gold)
    first.update(preds[:2], gold[:2])
    second.update(preds[2:], gold[2:])
    first.merge_state(second)
    assert (first.correct.item(), first.predicted.item(), first.gold.item()) == (3, 6, 4)
    assert first.compute() == whole.compute()


def conll_problem(kind, tmp_path):
    train = write_conll(tmp_path / "train.conll", make_sentences(30), "columns")
    test = None
    if kind == "no_tag_column":
        train.write_text("The DET\ncat\n\n")
    elif kind == "unseen_tag":
        test = tmp_path / "test.conll"
        test.write_text("Alice B-PER\nsang B-VERB\n\n")
    elif kind == "empty":
        train.write_text("")
    elif kind == "no_sentences":
        train.write_text("-DOCSTART- -X- O O\n\n\n")
    elif kind == "conllu_without_tags":
        train = tmp_path / "train.conllu"
        train.write_text("1\tde\tde\tADP\t_\t_\t0\t_\t_\t_\n2\tel\tel\t_\t_\t_\t1\t_\t_\t_\n\n")
    return train, test


CONLL_PROBLEMS = {
    "no_tag_column": "data.path: '{dir}/train.conll', line 2: 'cat' has no tag column; expected the token, then "
                     "the tag in the last column",
    "unseen_tag": "data.test_path: '{dir}/test.conll', line 2: tag 'B-VERB', which the training data never has; "
                  "the model knows 4 tags: B-LOC, B-PER, I-PER, O",
    "empty": "data.path: expected a CoNLL file (.conllu, or token-per-line columns), got '{dir}/train.conll', "
             "which is empty",
    "no_sentences": "data.path: '{dir}/train.conll' holds no sentences",
    "conllu_without_tags": "data.path: '{dir}/train.conllu', sentence 1, word 2 ('el'): no upos tag (_)",
}


@pytest.mark.parametrize("kind", sorted(CONLL_PROBLEMS))
def test_every_unusable_conll_file_is_named_with_its_own_reason(kind, tmp_path):
    train, test = conll_problem(kind, tmp_path)
    data = ConllDataModule(str(train), test_path=None if test is None else str(test))
    with pytest.raises(ConfigError) as raised:
        data.setup("fit")
    assert str(raised.value) == CONLL_PROBLEMS[kind].format(dir=tmp_path)
