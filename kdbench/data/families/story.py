"""`story` (benchmark v5): long-form text from a known stochastic grammar, every text checkable by a parser.

The input introduces a character, its home and the 3-4 places near that home (the home decides which: NEARBY):

    Nina the fox lives in the burrow. Nearby are the lake, the forest and the mill.

and the story is a chain of sentences, each drawn given what the story has said so far (its state):

    One morning, Nina the fox left the burrow.              opening: the time of day (TIMES)
    The fox walked to the lake.                              a move: a nearby place not visited yet (any verb of
    The fox went back to the lake.                             VERBS), or one visited before ("went back"), never
                                                               the place the character is at
    There the fox found a shell.                             an event at that place: find one of the place's
    There the fox met an owl.                                  OBJECTS (hands empty), give the object carried to
    The fox gave the shell to a duck.                          another animal (hands full), meet another animal,
    The fox rested by the lake.                                or rest where the character is
    At last Nina went home to the burrow with the shell.     the end, after 3-7 moves and events; it names the
                                                               character, the home and the object still carried

So a sentence is valid only against earlier ones: the name, animal and home must be the input's, "went back" needs
a place already visited and "walked/ran/hopped to" one not yet visited, "rested by" names the current place, "gave
the X" the object found earlier and still carried, the animals met are others than the character, and the ending
names what is carried at the end. An error a model makes early (a place it forgot it visited, an object it never
found) is detectable where it surfaces. The places near a home are the same in every story (a map the data's
writers share), so a model learns them as it learns which objects each place holds; the first v5 grammar drew
3-4 of the 10 places at random per prompt, and a 1M-parameter teacher trained on its ~1,200 stories never learned
to take the places from the input (no sampled story was valid: 77 of 80 first errors were moves to a place not
nearby; BENCHMARKS.md). The rules a story keeps with itself (visited, carried, where it is) are unchanged. The
character is "the fox" between the first and the last sentence: one
token of the embedded tokenizer, where a name is up to four.

Every sentence branches, and the grammar is unambiguous (each text has one derivation: a sentence's words name
every choice made), so p*(text) is the product of the choices' probabilities and the entropy is exact by dynamic
programming over the states (StoryDistribution.entropy). Texts are ~70-135 BPE tokens of the embedded tokenizer.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

from kdbench.data.families.words import ANIMALS, NAMES, POPULARITY, article

PLACES = ("lake", "forest", "market", "bridge", "garden", "cave", "hill", "farm", "meadow", "mill")
OBJECTS = {"lake": ("shell", "feather"), "forest": ("pinecone", "mushroom"), "market": ("ribbon", "pear"),
           "bridge": ("coin", "rope"), "garden": ("flower", "carrot"), "cave": ("crystal", "bone"),
           "hill": ("stone", "kite"), "farm": ("bucket", "basket"), "meadow": ("daisy", "clover"),
           "mill": ("bell", "sack")}
# Every place is near one home or two; 3 or 4 places near each home.
NEARBY = {"village": ("market", "bridge", "garden", "lake"), "cottage": ("garden", "meadow", "bridge"),
          "burrow": ("lake", "forest", "mill"), "den": ("cave", "hill", "farm", "meadow"),
          "barn": ("farm", "mill", "market", "hill")}
HOMES = tuple(NEARBY)
# Weights of each choice (normalized where drawn). Every place has the same number of objects and the same move
# and event weights, so the entropy depends on the number of places nearby and the character's animal only.
TIMES = {"morning": 4, "evening": 3, "day": 2, "night": 1}
VERBS = {"walked": 5, "ran": 3, "hopped": 2}
NEW_PLACE, KNOWN_PLACE = 2, 1  # a place not visited yet is twice as likely as a return
P_OBJECT, P_MEET, P_REST = 0.35, 0.45, 0.2  # P_OBJECT: find one (hands empty) or give it away (hands full)
MIN_EPISODES, MAX_EPISODES, P_STOP = 3, 7, 0.35  # one episode = a move and an event
PHRASINGS = (
    "Write a short story about the character below.",
    "Tell a little tale about this character and the places nearby.",
    "Write a story in which the character below goes for a walk.",
)
_INPUT = re.compile(r"(\w+) the (\w+) lives in the (\w+)\. Nearby are (the \w+(?:, the \w+)* and the \w+)\.")


@dataclass(frozen=True)
class World:
    name: str
    animal: str
    home: str
    places: tuple[str, ...]

    def describe(self) -> str:
        listed = [f"the {p}" for p in self.places]
        return (f"{self.name} the {self.animal} lives in the {self.home}. "
                f"Nearby are {', '.join(listed[:-1])} and {listed[-1]}.")


class State(NamedTuple):
    phase: str  # "open", "move" (a move or the end comes next), "event", "end"
    episodes: int
    place: str
    visited: frozenset
    carrying: str | None


def parse_world(input_: str) -> World:
    m = _INPUT.fullmatch(input_)
    if m is None:
        raise ValueError(f"story: cannot read the input {input_!r}; expected e.g. 'Nina the fox lives in the "
                         f"burrow. Nearby are the lake, the forest and the mill.'")
    name, animal, home, listed = m.groups()
    places = tuple(p.removeprefix("the ") for p in re.split(r", | and ", listed))
    if name not in NAMES or animal not in ANIMALS or home not in HOMES:
        raise ValueError(f"story: the input {input_!r} names a character or home outside the vocabulary")
    if places != NEARBY[home]:
        raise ValueError(f"story: the input {input_!r} lists places that are not the {home}'s; the places near "
                         f"the {home} are {', '.join(NEARBY[home])}")
    return World(name, animal, home, places)


def _next_sentences(w: World, s: State) -> list[tuple[str, float, State]]:
    """Every sentence that may come next in state `s`, with its probability and the state after it."""
    it = f"the {w.animal}"
    if s.phase == "open":
        total = sum(TIMES.values())
        return [(f"One {t}, {w.name} {it} left the {w.home}.", wt / total, s._replace(phase="move"))
                for t, wt in TIMES.items()]
    if s.phase == "move":
        stop = 0.0 if s.episodes < MIN_EPISODES else 1.0 if s.episodes >= MAX_EPISODES else P_STOP
        out = []
        if stop > 0:
            carried = f" with the {s.carrying}" if s.carrying else ""
            out.append((f"At last {w.name} went home to the {w.home}{carried}.", stop, s._replace(phase="end")))
        if stop == 1:
            return out
        targets = [(p, KNOWN_PLACE if p in s.visited else NEW_PLACE) for p in w.places if p != s.place]
        total = sum(wt for _, wt in targets)
        for p, wt in targets:
            after = State("event", s.episodes, p, s.visited | {p}, s.carrying)
            if p in s.visited:
                out.append((f"The {w.animal} went back to the {p}.", (1 - stop) * wt / total, after))
                continue
            verbs = sum(VERBS.values())
            out += [(f"The {w.animal} {v} to the {p}.", (1 - stop) * wt / total * vw / verbs, after)
                    for v, vw in VERBS.items()]
        return out
    if s.phase == "event":
        after = s._replace(phase="move", episodes=s.episodes + 1)
        others = {a: POPULARITY[a] for a in ANIMALS if a != w.animal}  # met or given to: by popularity
        total = sum(others.values())
        if s.carrying is None:
            found = OBJECTS[s.place]
            out = [(f"There {it} found a {o}.", P_OBJECT / len(found), after._replace(carrying=o)) for o in found]
        else:
            out = [(f"The {w.animal} gave the {s.carrying} to {article(a)} {a}.", P_OBJECT * aw / total,
                    after._replace(carrying=None)) for a, aw in others.items()]
        out += [(f"There {it} met {article(a)} {a}.", P_MEET * aw / total, after) for a, aw in others.items()]
        out.append((f"The {w.animal} rested by the {s.place}.", P_REST, after))
        return out
    return []  # the end: nothing may follow


def _start(w: World) -> State:
    return State("open", 0, w.home, frozenset(), None)


def _entropy_from(w: World, s: State, memo: dict) -> float:
    if s not in memo:
        memo[s] = sum(p * (-math.log(p) + _entropy_from(w, after, memo)) for _, p, after in _next_sentences(w, s))
    return memo[s]


@cache
def _entropy(n_places: int, animal: str) -> float:
    """Exact H in nats for any world with `n_places` places nearby and this animal: the name, the home and which
    places only relabel the states (every place has as many objects and the same weights), so one world of each
    size and animal stands for all of them."""
    world = World(NAMES[0], animal, HOMES[0], PLACES[:n_places])
    return _entropy_from(world, _start(world), {})


class StoryDistribution:
    """p*(story | input) of the grammar above: an AnswerDistribution with no listed support."""

    def __init__(self, world: World):
        self.world = world

    def _parse(self, words: list[str]) -> tuple[float, int | None]:
        """(log p of the sentences read, index of the first word no grammatical text continues with; the number of
        words when the text is a valid but incomplete prefix; None when it is complete)."""
        state, pos, logp = _start(self.world), 0, 0.0
        while True:
            candidates = _next_sentences(self.world, state)
            if not candidates:
                return logp, None if pos == len(words) else pos
            if pos == len(words):
                return logp, len(words)
            longest = 0
            for sentence, p, after in candidates:
                sentence_words = sentence.split()
                matched = 0
                for have, want in zip(words[pos:], sentence_words):
                    if have != want:
                        break
                    matched += 1
                if matched == len(sentence_words):  # no sentence is a prefix of another: each ends with "."
                    state, pos, logp = after, pos + matched, logp + math.log(p)
                    break
                longest = max(longest, matched)
            else:
                return logp, pos + longest  # == len(words) where the text stops inside a valid sentence

    def first_invalid_word(self, text: str) -> int | None:
        """Index (in text.split()) of the first word where `text` stops being a prefix of some story this input
        allows; None if the text is a whole story; len(text.split()) if it is a valid but unfinished one."""
        return self._parse(text.split())[1]

    def log_prob(self, text: str) -> float:
        words = text.split()
        if text != " ".join(words):  # the grammar writes one space between words and nothing around the text
            return -math.inf
        logp, stop = self._parse(words)
        return logp if stop is None else -math.inf

    def sample(self, rng: random.Random) -> str:
        state, sentences = _start(self.world), []
        while candidates := _next_sentences(self.world, state):
            u, acc, chosen = rng.random(), 0.0, candidates[-1]  # u past a total rounded below 1: the last one
            for candidate in candidates:
                acc += candidate[1]
                if u < acc:
                    chosen = candidate
                    break
            sentences.append(chosen[0])
            state = chosen[2]
        return " ".join(sentences)

    def support(self) -> None:
        return None

    def entropy(self) -> float:
        """Exact: sum over states of P(reach the state) * H(next sentence | state), by memoized recursion."""
        return _entropy(len(self.world.places), self.world.animal)

    def __repr__(self) -> str:
        return f"StoryDistribution({self.world.describe()!r})"


def generate(rng: random.Random) -> tuple[str, str, str]:
    home = rng.choice(HOMES)
    world = World(rng.choice(NAMES), rng.choice(ANIMALS), home, NEARBY[home])
    instruction = rng.choice(PHRASINGS)
    input_ = world.describe()
    return instruction, input_, distribution(instruction, input_).sample(rng)


def distribution(instruction: str, input_: str) -> StoryDistribution:
    if instruction not in PHRASINGS:
        raise ValueError(f"story: unknown instruction {instruction!r}; expected one of {list(PHRASINGS)}")
    return StoryDistribution(parse_world(input_))
