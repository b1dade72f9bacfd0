"""Visual-context controls: the same samples with the visual evidence taken away or falsified.

The paper claims its scores measure visual recognition, not text matching. The test of that claim
is to remove or falsify the images and see whether the scores fall. Each control is a named
condition that rewrites the test split (or a diagnostic set) into a table of the SAME schema, so
the captioning, CapEval-QA and diagnostic stages run on it unchanged:

- `intact`: the normal input (never rewritten; the workflow reads the original file).
- `text_only`: context images removed (empty image lists); dialogues, names and facts kept. The
  prompt builders then place each dialogue with its header and no image.
- `corrupted_context`: every context image degraded by the configured corruptions (Gaussian noise,
  Gaussian blur, patch shuffle), in that order, at one severity in (0, 1].
- `swapped_context`: each sample's context images replaced by those of another sample, chosen by a
  seeded derangement (Sattolo's algorithm: one cycle, so no sample keeps its own); dialogues and
  names kept, so the names now point at the wrong pictures. A donor image identical to the slot's
  own image is skipped when the donor has another one, so a shared concept is not "swapped" to itself.
- `blank_query`: the query image replaced by a flat grey image of the same size (`blank`), or by the
  query of another sample (`unrelated`: for split rows one whose positives are none of this sample's
  context concepts; for diagnostic items the derangement partner's query).

Only image cells change; every text, list length, label and id is kept. `control_changes` rows
record, per changed cell, what was done and the SHA-256 of the bytes before and after, so the
report can state it and the tests can check it. Everything is a pure function of (seed, condition,
dataset, sample id), so a control reproduces exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from covip.io import decode_image, encode_png
from covip.seeding import rng_for

INTACT = "intact"
CONDITIONS = ("intact", "text_only", "corrupted_context", "swapped_context", "blank_query")
CORRUPTIONS = ("noise", "blur", "patch_shuffle")
BLANK_MODES = ("blank", "unrelated")
BLANK_GREY = (128, 128, 128)

# Column names of the image-bearing fields in the two table layouts the controls rewrite.
LAYOUTS = {
    "split": {"context_images": "context_images", "context_dialogues": "context_dialogues", "query": "query_image"},
    "diagnostic": {"context_images": "images_context", "context_dialogues": "dialogues_context", "query": "query_image"},
}


class ControlError(ValueError):
    """A table that cannot be put under a control; the message names the dataset, row and field."""


@dataclass
class ControlSettings:
    """Settings of the visual-context controls (config section `controls`)."""

    conditions: list[str] = field(
        default_factory=lambda: list(CONDITIONS),
        metadata={"help": f"Conditions every policy is scored under; 'intact' must be one of them. Known: {list(CONDITIONS)}."},
    )
    corruptions: list[str] = field(
        default_factory=lambda: list(CORRUPTIONS),
        metadata={"help": f"Degradations applied, in this order, to every context image under corrupted_context: {list(CORRUPTIONS)}."},
    )
    severity: float = field(
        default=0.6,
        metadata={"help": "Corruption strength in (0, 1]: noise std = 96*severity grey levels, blur radius = 6% of the image side*severity, patch grid = 2 + round(6*severity) per side."},
    )
    blank_mode: str = field(
        default="blank",
        metadata={"help": "What replaces the query image under blank_query: 'blank' (flat grey) or 'unrelated' (another sample's query showing none of this sample's concepts)."},
    )
    seed_offset: int = field(default=0, metadata={"help": "Extra key in the controls' random draws (swap, corruption, unrelated query); change it for a fresh draw."})
    diagnostics: bool = field(
        default=True,
        metadata={"help": "Also run the LSD/LAR/ITR diagnostics under every condition (false: diagnostics only under intact, the CapEval-QA scores still under all)."},
    )

    def __post_init__(self):
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"controls.conditions: unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
        if INTACT not in self.conditions:
            raise ValueError("controls.conditions must include 'intact' (every drop is measured against it)")
        if len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"controls.conditions lists a condition twice: {self.conditions}")
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad or not self.corruptions:
            raise ValueError(f"controls.corruptions must be a non-empty subset of {list(CORRUPTIONS)}, got {self.corruptions}")
        if not 0.0 < float(self.severity) <= 1.0:
            raise ValueError(f"controls.severity must be in (0, 1], got {self.severity}")
        if self.blank_mode not in BLANK_MODES:
            raise ValueError(f"controls.blank_mode must be one of {list(BLANK_MODES)}, got {self.blank_mode!r}")


# ---------------------------------------------------------------------------------------------------
# Image operations (each a pure function of its inputs and rng)


def image_sha(cell) -> str:
    """SHA-256 of an image cell's bytes ({'bytes', 'path'} struct or raw bytes); '' for none."""
    data = cell.get("bytes") if isinstance(cell, Mapping) else cell
    return hashlib.sha256(data).hexdigest() if data else ""


def corrupt_image(image: Image.Image, kinds: Sequence[str], severity: float, rng: np.random.Generator) -> Image.Image:
    """`image` degraded by each of `kinds` in order (see ControlSettings.severity for the scales)."""
    out = image.convert("RGB")
    for kind in kinds:
        if kind == "blur":
            out = out.filter(ImageFilter.GaussianBlur(radius=max(0.5, 0.06 * severity * min(out.size))))
        elif kind == "noise":
            pixels = np.asarray(out, dtype=np.float32)
            pixels = pixels + rng.normal(0.0, 96.0 * severity, size=pixels.shape)
            out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        elif kind == "patch_shuffle":
            out = _patch_shuffle(out, 2 + round(6 * severity), rng)
        else:
            raise ControlError(f"unknown corruption {kind!r}; choose from {list(CORRUPTIONS)}")
    return out


def _patch_shuffle(image: Image.Image, grid: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image)
    h, w = (pixels.shape[0] // grid) * grid, (pixels.shape[1] // grid) * grid
    ph, pw = h // grid, w // grid
    patches = [pixels[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] for r in range(grid) for c in range(grid)]
    order = sattolo(len(patches), rng)  # a derangement: no patch stays where it was
    out = pixels.copy()
    for k, source in enumerate(order):
        r, c = divmod(k, grid)
        out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = patches[source]
    return Image.fromarray(out)


def blank_like(image: Image.Image) -> Image.Image:
    return Image.new("RGB", image.size, BLANK_GREY)


def sattolo(n: int, rng: np.random.Generator) -> list[int]:
    """A uniformly drawn cyclic permutation of range(n): position i receives from order[i] != i (n >= 2)."""
    if n < 2:
        raise ControlError(f"a derangement needs at least 2 items, got {n}")
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i (not <= i): that is what makes it a single cycle
        order[i], order[j] = order[j], order[i]
    return order


def _cell(image: Image.Image, old) -> dict:
    path = old.get("path") if isinstance(old, Mapping) else None
    return {"bytes": encode_png(image), "path": path}


# ---------------------------------------------------------------------------------------------------
# The controls


def apply_control(
    rows: Sequence[Mapping],
    condition: str,
    settings: ControlSettings,
    seed: int,
    *,
    layout: str = "split",
    dataset: str = "test",
) -> tuple[list[dict], list[dict]]:
    """(rows under `condition`, change records) for split rows (`layout='split'`) or diagnostic items.

    The output rows have the input's schema and order; only image cells differ. Change records are
    rows of schemas.CONTROL_CHANGES. `intact` returns copies of the rows and no changes.
    """
    if condition not in CONDITIONS:
        raise ControlError(f"unknown condition {condition!r}; choose from {list(CONDITIONS)}")
    if layout not in LAYOUTS:
        raise ControlError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    fields = LAYOUTS[layout]
    rows = [dict(row) for row in rows]
    for index, row in enumerate(rows):
        images, dialogues = row.get(fields["context_images"]), row.get(fields["context_dialogues"])
        if images is None or dialogues is None or len(images) != len(dialogues):
            raise ControlError(
                f"{dataset} row {index} (sample_id={row.get('sample_id')}): fields '{fields['context_images']}' and "
                f"'{fields['context_dialogues']}' must be lists of the same length"
            )
    changes: list[dict] = []
    ctx, query = fields["context_images"], fields["query"]

    def record(row, field_name, k, change, before, after, source=None):
        changes.append({
            "condition": condition, "dataset": dataset, "sample_id": str(row["sample_id"]), "field": field_name,
            "index": k, "change": change, "source_sample_id": source,
            "sha_before": image_sha(before), "sha_after": image_sha(after),
        })

    if condition == INTACT:
        return rows, changes
    if condition == "text_only":
        for row in rows:
            for k, image in enumerate(row[ctx]):
                record(row, ctx, k, "removed", image, None)
            row[ctx] = []
    elif condition == "corrupted_context":
        kinds = list(settings.corruptions)
        for index, row in enumerate(rows):
            new = []
            for k, image in enumerate(row[ctx]):
                rng = rng_for(seed, "controls", settings.seed_offset, condition, dataset, row["sample_id"], k)
                where = f"{dataset} row {index} (sample_id={row['sample_id']}) field '{ctx}'[{k}]"
                cell = _cell(corrupt_image(decode_image(_bytes(image), where), kinds, settings.severity, rng), image)
                record(row, ctx, k, f"{'+'.join(kinds)} severity {settings.severity:g}", image, cell)
                new.append(cell)
            row[ctx] = new
    elif condition == "swapped_context":
        donors = swap_partners(rows, seed, settings.seed_offset, dataset)
        originals = [list(row[ctx]) for row in rows]
        for i, row in enumerate(rows):
            donor_images = originals[donors[i]]
            if not donor_images:
                raise ControlError(f"{dataset}: sample {rows[donors[i]]['sample_id']} has no context images to lend")
            new = []
            for k, own in enumerate(originals[i]):
                # Prefer donor images that differ from this slot's own picture (a concept both share).
                candidates = [d for d in donor_images if image_sha(d) != image_sha(own)] or donor_images
                cell = dict(candidates[k % len(candidates)])
                record(row, ctx, k, "swapped", own, cell, source=str(rows[donors[i]]["sample_id"]))
                new.append(cell)
            row[ctx] = new
    elif condition == "blank_query":
        partners = unrelated_partners(rows, seed, settings.seed_offset, dataset, layout) if settings.blank_mode == "unrelated" else None
        originals = [row[query] for row in rows]
        for i, row in enumerate(rows):
            old = originals[i]
            if partners is None:
                image = decode_image(_bytes(old), f"{dataset} row {i} (sample_id={row['sample_id']}) field '{query}'")
                cell, source, change = _cell(blank_like(image), old), None, "blank"
            else:
                j = partners[i]
                cell, source, change = dict(originals[j]), str(rows[j]["sample_id"]), "unrelated query"
            record(row, query, -1, change, old, cell, source=source)
            row[query] = cell
    return rows, changes


def _bytes(cell):
    return cell.get("bytes") if isinstance(cell, Mapping) else cell


def swap_partners(rows: Sequence[Mapping], seed: int, seed_offset: int, dataset: str) -> list[int]:
    """donor[i] for every row: a seeded derangement over the rows taken in sample-id order, so the
    pairing does not depend on file order."""
    ids = [str(row["sample_id"]) for row in rows]
    by_id = sorted(range(len(ids)), key=ids.__getitem__)
    cycle = sattolo(len(ids), rng_for(seed, "controls-swap", seed_offset, dataset))
    donors = [0] * len(ids)
    for position, source in enumerate(cycle):
        donors[by_id[position]] = by_id[source]
    return donors


def unrelated_partners(rows: Sequence[Mapping], seed: int, seed_offset: int, dataset: str, layout: str) -> list[int]:
    """For each row, another row whose query can stand in as an unrelated image.

    Split rows know their concept ids: the partner's positive concepts must be none of this row's
    context concepts (error when no row qualifies). Diagnostic items do not: the swap partner is used.
    """
    donors = swap_partners(rows, seed, seed_offset, dataset)
    if layout != "split":
        return donors
    out = []
    for i, row in enumerate(rows):
        own = set(row.get("context_concept_ids") or [])
        ok = []
        for j, other in enumerate(rows):
            ids = list(other.get("context_concept_ids") or [])
            shown = {ids[p] for p in (other.get("positive_indices") or []) if p < len(ids)}
            if j != i and not (shown & own):
                ok.append(j)
        if not ok:
            raise ControlError(
                f"{dataset} row {i} (sample_id={row['sample_id']}): no other sample's query shows none of its "
                "concepts; use controls.blank_mode: blank"
            )
        rng = rng_for(seed, "controls-unrelated", seed_offset, dataset, row["sample_id"])
        out.append(ok[int(rng.integers(0, len(ok)))])
    return out


# ---------------------------------------------------------------------------------------------------
# Effects: every metric under every condition, and its paired drop against intact


def control_effects(
    capeval_answers: Mapping[str, Sequence[Mapping]],
    diagnostic_responses: Mapping[str, Sequence[Mapping]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    policy_identities: Mapping[str, str] | None = None,
) -> list[dict]:
    """Rows of schemas.CONTROL_EFFECTS from CapEval-QA answers and diagnostic responses per condition.

    For every (policy, judge) and condition: Acc+ and Acc- per concept count (1-4, and 0 = pooled);
    for every (policy, task, mode) and condition: the mean diagnostic score. `drop` is intact minus the
    condition, over the samples present in both, and its interval comes from a PAIRED cluster
    bootstrap: one set of sample draws serves both conditions (capeval.paired_drop_interval), so the
    interval is about the change, not about which samples were drawn. Intact rows carry drop 0 and
    no interval.
    """
    from covip.stages.capeval import bootstrap_draws, paired_drop_interval, per_sample_counts

    if INTACT not in capeval_answers:
        raise ControlError("control effects need the 'intact' CapEval-QA answers to measure drops against")
    identities = dict(policy_identities or {})
    rows: list[dict] = []

    def interval(base_c, base_t, c, t, keys):
        if n_bootstrap <= 0 or not len(base_c):
            return None, None
        draws = bootstrap_draws(rng_for(seed, "controls-bootstrap", *keys), len(base_c), n_bootstrap)
        return paired_drop_interval(base_c, base_t, c, t, draws, confidence)

    tallies = {condition: per_sample_counts(answers) for condition, answers in capeval_answers.items()}
    meta = {}
    for condition, answers in capeval_answers.items():
        for row in answers:
            info = meta.setdefault((condition, row["policy"], row["judge"]), {"identity": row["judge_identity"], "stand_in": False})
            info["stand_in"] |= bool(row["stand_in"])
    for condition in _ordered(capeval_answers):
        for (policy, judge), samples in sorted(tallies[condition].items()):
            base = tallies[INTACT].get((policy, judge))
            if base is None:
                continue
            shared = sorted(set(samples) & set(base))
            info = meta[(condition, policy, judge)]
            for count in sorted({base[s][0] for s in shared}) + [0]:
                chosen = [s for s in shared if count == 0 or base[s][0] == count]
                b = np.array([base[s][1:5] for s in chosen], dtype=np.float64).reshape(-1, 4)
                x = np.array([samples[s][1:5] for s in chosen], dtype=np.float64).reshape(-1, 4)
                for metric, (ci, ti) in (("acc_pos", (0, 1)), ("acc_neg", (2, 3))):
                    if not b[:, ti].sum() or not x[:, ti].sum():
                        continue
                    value = 100.0 * x[:, ci].sum() / x[:, ti].sum()
                    intact = 100.0 * b[:, ci].sum() / b[:, ti].sum()
                    low, high = (None, None) if condition == INTACT else interval(
                        b[:, ci], b[:, ti], x[:, ci], x[:, ti], ("capeval", policy, judge, condition, count))
                    rows.append(_effect(policy, condition, metric, "", judge, count, value, intact, low, high,
                                        len(chosen), identities.get(policy, policy), info["identity"], info["stand_in"]))

    scores: dict[str, dict[tuple[str, str, str], dict[str, float]]] = {}
    dmeta: dict[tuple, dict] = {}
    for condition, responses in diagnostic_responses.items():
        for row in responses:
            key = (row["policy"], row["task"], row["mode"])
            info = dmeta.setdefault(key, {"scorer": row["scorer"], "identity": row["model_identity"], "stand_in": False})
            info["stand_in"] |= bool(row["stand_in"])
            if row.get("score") is not None:
                scores.setdefault(condition, {}).setdefault(key, {})[row["sample_id"]] = float(row["score"])
    for condition in _ordered(scores):
        for key, values in sorted(scores[condition].items()):
            base = scores.get(INTACT, {}).get(key)
            if base is None:
                continue
            shared = sorted(set(values) & set(base))
            if not shared:
                continue
            b = np.array([base[s] for s in shared])
            x = np.array([values[s] for s in shared])
            ones = np.ones(len(shared))
            policy, task, mode = key
            low, high = (None, None) if condition == INTACT else interval(b, ones, x, ones, ("diagnostics", *key, condition))
            info = dmeta[key]
            rows.append(_effect(policy, condition, task, mode, info["scorer"], 0, 100.0 * x.mean(), 100.0 * b.mean(),
                                low, high, len(shared), info["identity"], info["scorer"], info["stand_in"]))
    return rows


def _ordered(conditions) -> list[str]:
    return sorted(conditions, key=lambda c: CONDITIONS.index(c) if c in CONDITIONS else len(CONDITIONS))


def _effect(policy, condition, metric, mode, judge, count, value, intact, low, high, n, policy_identity,
            judge_identity, stand_in) -> dict:
    return {
        "policy": policy, "condition": condition, "metric": metric, "mode": mode, "judge": judge,
        "num_positives": int(count), "value": float(value), "intact": float(intact),
        "drop": float(intact - value), "drop_low": low, "drop_high": high, "n_samples": int(n),
        "policy_identity": policy_identity, "judge_identity": judge_identity, "stand_in": bool(stand_in),
    }
