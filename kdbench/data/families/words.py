"""The closed vocabulary the embedded benchmark writes with, shared by version 4 (kdbench.data.embedded) and the
version-5 families of this package.

Changing a list changes the splits it feeds: the benchmark version must move with it (see embedded.py).
"""

from __future__ import annotations

ANIMALS = ["cat", "dog", "fox", "owl", "bear", "wolf", "duck", "frog", "goat", "hare", "lion", "mole", "seal",
           "swan", "toad", "crab"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "purple", "orange", "gold"]
NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Karen", "Leo",
         "Maria", "Nina", "Oscar", "Paul", "Rita", "Sam", "Tina", "Victor"]
ASPECTS = ["food", "service", "room", "music", "price", "view", "staff", "coffee", "bed", "menu", "garden", "show"]
POSITIVE = ["great", "lovely", "excellent", "pleasant", "superb", "friendly", "clean", "tasty"]
NEGATIVE = ["awful", "terrible", "rude", "dirty", "boring", "noisy", "bland", "poor"]

# How much the data's writers like each animal and color (v5): when several answers are right, a writer picks one
# with probability proportional to its weight among the right ones. Fixed across prompts, so a teacher trained on
# many prompts can learn it, while one reference per prompt shows only one pick. Integers: the splits do not rest
# on how a platform rounds a float literal.
POPULARITY = {
    "cat": 10, "dog": 9, "fox": 6, "owl": 5, "bear": 5, "wolf": 4, "duck": 4, "frog": 3, "goat": 3, "hare": 2,
    "lion": 6, "mole": 1, "seal": 2, "swan": 2, "toad": 1, "crab": 1,
    "red": 10, "blue": 9, "green": 7, "yellow": 5, "black": 5, "white": 4, "pink": 3, "brown": 2, "gray": 1,
    "purple": 3, "orange": 2, "gold": 1,
}


def article(word: str) -> str:
    """'a' or 'an' before `word` (an owl, a cat)."""
    return "an" if word[0] in "aeiou" else "a"
