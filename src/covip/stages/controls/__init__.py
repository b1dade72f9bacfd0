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

Modules: `settings` (config section `controls`), `apply` (rule apply_control: rewriting a table
under one condition) and `effects` (rule summarize_controls: every score under every condition, with
its paired drop against intact).
"""
