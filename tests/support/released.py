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


def write_released_test(root: Path, qas_gt: Path = QAS_GT, *, share_first_concept: bool = True) -> dict:
    """A test set in the authors' release layout under `root`, for the ground truth `qas_gt`: drawn
    PNG/JPEG images under root/images, and root/meta.jsonl with one record per sample_N (imgs,
    concepts, dialogues), paths relative to root/images (some with the leading '/' the authors' notebook
    concatenates). Sample 1's first concept reuses sample 0's photo when `share_first_concept`.
    Returns {"meta", "qas_gt", "image_root", "records"}."""
    import json

    from PIL import Image, ImageDraw

    truth = json.loads(Path(qas_gt).read_text(encoding="utf-8"))
    images = root / "images"
    records = []
    for n, (sample_id, sample) in enumerate(truth.items()):
        assert sample_id == f"sample_{n}"
        folder = images / "CoViP_testset" / sample_id
        (folder / "concepts").mkdir(parents=True, exist_ok=True)
        k = len(sample["qas"])
        concepts = []
        for j in range(k):
            picture = Image.new("RGB", (48, 40), (40 * j + 20, 90, 200 - 30 * n))
            ImageDraw.Draw(picture).ellipse([8 + 4 * j, 6, 30 + 2 * n, 30], fill=(250, 250 - 40 * j, 10))
            relative = f"CoViP_testset/{sample_id}/concepts/concept_{j}.png"
            if share_first_concept and n == 1 and j == 0:
                relative = "CoViP_testset/sample_0/concepts/concept_0.png"
            else:
                picture.save(images / relative)
            concepts.append(("/" + relative) if j % 2 else relative)
        query = Image.new("RGB", (64, 64), (200, 180, 160))
        ImageDraw.Draw(query).rectangle([10, 10, 40 + n, 50], fill=(30, 60 * n % 255, 90))
        query.save(folder / "query.jpg", quality=90)
        dialogues = {f"dialogue_{j}": f"User: This is concept {j} of {sample_id}.\nModel: Noted." for j in range(k)}
        records.append({"imgs": f"/CoViP_testset/{sample_id}/query.jpg", "concepts": concepts, "dialogues": dialogues})
    meta = root / "meta_CoViP_testset_cleaned.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" + ("\n" if i == 0 else "") for i, r in enumerate(records)))
    return {"meta": meta, "qas_gt": Path(qas_gt), "image_root": images, "records": records}
