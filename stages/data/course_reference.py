"""The course's filter code, verbatim ("Pretraining LLMs", DeepLearning.AI /
Upstage, lesson 2 data preparation): the reference the `filter` stage's
`paragraph_length` and `paragraph_repetition` filters are tested and
benchmarked against (tests/stages/data/filter/, bench/data_pipeline.py).
Only change: len() of the duplicate list, which the course divides directly
(a TypeError in Python); quotes and line breaks are as the project's
formatter writes them."""

import heapq
import re


def paragraph_length_filter(x):
    """Returns False iff a page has too few lines or lines are too short."""
    lines = x["text"].split("\n")
    if len(lines) < 3 or min(heapq.nlargest(3, [len(line) for line in lines])) < 3:  # noqa: SIM103 - verbatim
        return False
    return True


def find_duplicates(paragraphs):
    """Use this function to find the number of repetitions in the paragraphs."""
    unique_x = set()
    duplicate_chars = 0
    duplicate_elements = []
    for element in paragraphs:
        if element in unique_x:
            duplicate_chars += len(element)
            duplicate_elements.append(element)
        else:
            unique_x.add(element)
    return duplicate_elements, duplicate_chars


def paragraph_repetition_filter(x):
    """Returns False iff a page has too many repetitions."""
    text = x["text"]
    paragraphs = re.compile(r"\n{2,}").split(text.strip())
    paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
    if len(paragraphs_duplicates) / len(paragraphs) > 0.3:
        return False
    if char_duplicates / len(text) > 0.2:  # noqa: SIM103 - the course's code, kept as written
        return False
    return True
