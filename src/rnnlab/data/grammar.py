"""A generated character corpus: dialogue from a small probabilistic grammar.

The text looks like a play script, so a character model has structure to learn at
several time scales: spelling of about 150 words, subject-verb agreement (singular and
plural nouns take different verb forms), nested noun phrases and relative clauses,
punctuation that matches the sentence type, capitalised sentence starts, and speaker
headings followed by one to three sentences. Nothing is read from disk, so the default
character-model run works on any machine::

    KING:
    The old servant that loves the river speaks of a silver crown.
    Where do the brave knights ride?
"""

from __future__ import annotations

import random

SPEAKERS = ["KING", "QUEEN", "DUKE", "FOOL", "NURSE", "HERALD", "LADY ANNE", "FIRST WITCH", "SOLDIER"]
ADJECTIVES = ["old", "young", "brave", "gentle", "cruel", "wise", "silver", "golden", "pale", "proud",
              "sweet", "noble", "bitter", "quiet", "dark", "fair", "wild", "honest"]
NOUNS = {  # singular -> plural
    "king": "kings", "queen": "queens", "knight": "knights", "servant": "servants", "horse": "horses",
    "crown": "crowns", "sword": "swords", "river": "rivers", "castle": "castles", "storm": "storms",
    "letter": "letters", "daughter": "daughters", "enemy": "enemies", "lady": "ladies", "friend": "friends",
    "heart": "hearts", "child": "children", "man": "men", "woman": "women", "ghost": "ghosts",
}
TRANSITIVE = {  # base -> third person singular
    "love": "loves", "fear": "fears", "seek": "seeks", "betray": "betrays", "follow": "follows",
    "remember": "remembers", "guard": "guards", "curse": "curses", "praise": "praises", "find": "finds",
}
INTRANSITIVE = {
    "sleep": "sleeps", "weep": "weeps", "ride": "rides", "speak": "speaks", "wait": "waits",
    "fall": "falls", "dream": "dreams", "laugh": "laughs",
}
PREPOSITIONS = ["near", "under", "beyond", "beside", "of", "with", "against"]
ADVERBS = ["tonight", "at dawn", "in silence", "once more", "for ever", "again", "too late"]
INTERJECTIONS = ["Alas", "O", "Hark", "Fie", "Peace", "Away", "Good morrow"]
WH = ["Where", "Why", "When", "How"]


class _Grammar:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def noun_phrase(self, depth: int = 0) -> tuple[str, bool]:
        """Return (text, plural)."""
        r = self.rng
        plural = self.chance(0.35)
        noun = r.choice(list(NOUNS))
        words = [("the" if plural or self.chance(0.6) else ("an" if noun[0] in "aeiou" else "a"))]
        if self.chance(0.5):
            adjective = r.choice(ADJECTIVES)
            if words[0] in ("a", "an"):
                words[0] = "an" if adjective[0] in "aeiou" else "a"
            words.append(adjective)
        words.append(NOUNS[noun] if plural else noun)
        if depth < 2 and self.chance(0.2):
            words += [r.choice(PREPOSITIONS), self.noun_phrase(depth + 1)[0]]
        elif depth < 2 and self.chance(0.15):
            verb = r.choice(list(TRANSITIVE))
            words += ["that", verb if plural else TRANSITIVE[verb], self.noun_phrase(depth + 1)[0]]
        return " ".join(words), plural

    def verb_phrase(self, plural: bool) -> str:
        r = self.rng
        if self.chance(0.6):
            verb = r.choice(list(TRANSITIVE))
            text = f"{verb if plural else TRANSITIVE[verb]} {self.noun_phrase(1)[0]}"
        else:
            verb = r.choice(list(INTRANSITIVE))
            text = verb if plural else INTRANSITIVE[verb]
            if self.chance(0.4):
                text += f" {r.choice(PREPOSITIONS)} {self.noun_phrase(1)[0]}"
        if self.chance(0.3):
            text += " " + r.choice(ADVERBS)
        return text

    def sentence(self) -> str:
        r = self.rng
        kind = r.random()
        if kind < 0.55:
            subject, plural = self.noun_phrase()
            text = f"{subject} {self.verb_phrase(plural)}"
            if self.chance(0.2):
                subject2, plural2 = self.noun_phrase()
                text += f", and {subject2} {self.verb_phrase(plural2)}"
            end = "."
        elif kind < 0.8:
            subject, plural = self.noun_phrase()
            verb = r.choice(list(INTRANSITIVE))
            text = f"{r.choice(WH).lower()} {'do' if plural else 'does'} {subject} {verb}"
            end = "?"
        else:
            subject, plural = self.noun_phrase()
            text = f"{r.choice(INTERJECTIONS).lower()}, {subject} {self.verb_phrase(plural)}"
            end = "!"
        return text[0].upper() + text[1:] + end

    def speech(self) -> str:
        lines = [self.sentence() for _ in range(self.rng.choice((1, 1, 2, 2, 3)))]
        return f"{self.rng.choice(SPEAKERS)}:\n" + "\n".join(lines) + "\n\n"


def generate_grammar_corpus(num_chars: int, seed: int = 0) -> str:
    """Return about ``num_chars`` characters of grammar dialogue (whole speeches, >= num_chars)."""
    grammar = _Grammar(random.Random(seed))
    parts, total = [], 0
    while total < num_chars:
        speech = grammar.speech()
        parts.append(speech)
        total += len(speech)
    return "".join(parts)
