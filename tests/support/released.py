"""The authors' released ground-truth excerpt and three captions written for it by hand (see
../shared/fixtures/README.md): scored with the lexical judge, sample_0 gets every positive right,
sample_1 says nothing about any memory, sample_2 drags a negative concept in."""

from __future__ import annotations

from pathlib import Path

QAS_GT = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qas_gt_excerpt.json"

SAMPLE_0_CAPTION = ("Seth is here! He gets especially excited whenever he passes the cherry blossom trees. Last weekend "
                    "you took Seth to the park, where he tripped over his own paws while chasing a squirrel.")
SAMPLE_1_CAPTION = "A small dog sits on a grey couch."
SAMPLE_2_CAPTION = ("Johnny curled up on the couch beside the user when he first came home from the shelter on a rainy "
                    "afternoon in October.")
CAPTIONS = {"sample_0": SAMPLE_0_CAPTION, "sample_1": SAMPLE_1_CAPTION, "sample_2": SAMPLE_2_CAPTION}

# With the lexical judge: 27 questions; 3 of 9 positives and 16 of 18 negatives right.
N_QUESTIONS = 27
ACC_POS = 100.0 * 3 / 9
ACC_NEG = 100.0 * 16 / 18
