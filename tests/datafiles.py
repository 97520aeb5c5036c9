"""Small data files written by the tests, each to its format's description: sequence files
(.npz, .pt, long-format CSV, UEA/UCR .ts) and CoNLL files (CoNLL-U and the column format)."""

from pathlib import Path

import numpy as np
import torch

FORMATS = ("npz", "pt", "csv", "ts")


def make_sequences(n: int, seed: int = 0, num_features: int = 3, labels=("walk", "run", "sit"),
                   min_len: int = 4, max_len: int = 12):
    """n variable-length sequences whose label is the feature with the largest mean: a list of
    (T_i, D) float32 arrays and a list of labels (``labels[k]`` for class k)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n)
    classes = rng.integers(0, len(labels), n)
    sequences = []
    for length, k in zip(lengths, classes):
        x = rng.normal(size=(length, num_features)).astype(np.float32) + 5.0  # an offset standardising removes
        x[:, k % num_features] += 1.5
        sequences.append(x)
    return sequences, [labels[k] for k in classes]


def write_sequences(path: Path, sequences, labels, fmt: str) -> Path:
    """Write ``sequences`` (list of (T_i, D)) and ``labels`` (or None) as ``fmt``; return the path."""
    path = Path(path).with_suffix("." + fmt)
    lengths = np.array([len(s) for s in sequences])
    if fmt == "npz":
        x = np.zeros((len(sequences), lengths.max(), sequences[0].shape[1]), dtype=np.float32)
        for i, s in enumerate(sequences):
            x[i, : len(s)] = s
        arrays = {"x": x, "lengths": lengths}
        if labels is not None:
            arrays["y"] = np.array(labels)
        np.savez(path, **arrays)
    elif fmt == "pt":
        data = {"x": [torch.from_numpy(s) for s in sequences]}
        if labels is not None:
            data["y"] = list(labels)
        torch.save(data, path)
    elif fmt == "csv":
        # Rows in a shuffled order, put back in time order by the 't' column.
        rows = [(f"s{i}", t, *map(float, step), labels[i] if labels is not None else None)
                for i, s in enumerate(sequences) for t, step in enumerate(s)]
        order = np.random.default_rng(1).permutation(len(rows))
        features = [f"f{d}" for d in range(sequences[0].shape[1])]
        with open(path, "w") as f:
            f.write(",".join(["id", "t", *features] + (["label"] if labels is not None else [])) + "\n")
            for r in order:
                row = rows[r] if labels is not None else rows[r][:-1]
                f.write(",".join(repr(v) if isinstance(v, float) else str(v) for v in row) + "\n")
    elif fmt == "ts":
        with open(path, "w") as f:
            f.write("# written by the rnnlab tests\n@problemName Test\n@timeStamps false\n@missing false\n")
            f.write(f"@univariate {'true' if sequences[0].shape[1] == 1 else 'false'}\n")
            f.write(f"@dimensions {sequences[0].shape[1]}\n@equalLength false\n")
            f.write("@classLabel " + ("true " + " ".join(sorted(set(map(str, labels)))) if labels is not None
                                      else "false") + "\n@data\n")
            for i, s in enumerate(sequences):
                dims = ":".join(",".join(repr(float(v)) for v in s[:, d]) for d in range(s.shape[1]))
                f.write(dims + (f":{labels[i]}" if labels is not None else "") + "\n")
    else:
        raise ValueError(fmt)
    return path


ENTITY_WORDS = {"PER": ["Alice", "Bob", "Carol", "Dave"], "LOC": ["Paris", "Rome", "Oslo"]}
OTHER_WORDS = ["the", "went", "to", "saw", "a", "dog", "in", "and", "with", "met", "."]


def make_sentences(n: int, seed: int = 0):
    """n sentences of (token, POS, BIO entity tag); entity words are tagged B-/I- PER or LOC."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n):
        sentence = []
        for _ in range(rng.integers(3, 10)):
            r = rng.random()
            if r < 0.3:
                kind = "PER" if r < 0.2 else "LOC"
                sentence.append((str(rng.choice(ENTITY_WORDS[kind])), "PROPN", f"B-{kind}"))
                if kind == "PER" and rng.random() < 0.4:
                    sentence.append(("Smith", "PROPN", "I-PER"))
            else:
                word = str(rng.choice(OTHER_WORDS))
                sentence.append((word, "PUNCT" if word == "." else "X", "O"))
        sentences.append(sentence)
    return sentences


def write_conll(path: Path, sentences, fmt: str = "columns", with_tags: bool = True) -> Path:
    """CoNLL-2003-style columns (token POS chunk tag, a -DOCSTART- line first) or CoNLL-U (UPOS =
    the POS column, the entity tag in MISC)."""
    path = Path(path)
    with open(path, "w") as f:
        if fmt == "columns":
            f.write("-DOCSTART- -X- -X- O\n\n")
            for sentence in sentences:
                for token, pos, tag in sentence:
                    f.write(f"{token} {pos} O {tag}\n" if with_tags else f"{token}\n")
                f.write("\n")
        else:
            for i, sentence in enumerate(sentences):
                f.write(f"# sent_id = s{i}\n# text = {' '.join(t for t, _, _ in sentence)}\n")
                for j, (token, pos, tag) in enumerate(sentence, 1):
                    f.write(f"{j}\t{token}\t{token.lower()}\t{pos if with_tags else '_'}\t_\t_\t0\t_\t_\tNE={tag}\n")
                f.write("\n")
    return path
