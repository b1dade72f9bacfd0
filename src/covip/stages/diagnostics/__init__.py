"""Stage 11: the LSD / LAR / ITR diagnostic tasks (SPEC §5), built, answered direct or with CAG, scored.

One module per job: `settings` (config section `diagnostics`), `sets` (generating a set from the
concept pool), `hub` (reading a set in the hub layout), `answering` (direct and CAG responses),
`scoring` (per-row scores) and `summary` (means with intervals). The package initialiser imports
none of them, so each rule's code fingerprint holds only the modules it runs.

Every item is an interleaved context of several short dialogues about fictional people, each shown
with a photo, then a NEW photo of one of them (the target) and a question:

- LSD (last-seen detection): each dialogue says where and when the user met the person; the answer is
  the place of the target's most recent encounter. Scored by token-set F1 of the last \\boxed{...} of
  the response against that place.
- LAR (last-action recall): as LSD, and the target's most recent dialogue has one more user line
  about something the user must do; the answer is that action. Scored by a judge model (correct /
  wrong); offline, `local_lexical_judge` with `covip.local.lar_judge.lexical_lar_verdict`.
- ITR (instruction-triggered recall): the target's most recent dialogue asks to be reminded with a
  made-up keyword when the person shows up again; the question is generic and the response must
  contain the keyword. Scored by keyword presence.

Set generation. The target appears in `target_mentions_*` dialogues with distinct dates (at least
`min_gap_days` apart, so "most recent" is unambiguous) and distinct places; the other dialogues are
about other people of the pool (persons preferred). The context order is shuffled, so the most
recent encounter is not always last. Names and places are Faker fakes, unique within an item, and
no two places of an item share a word, so naming the wrong place scores 0 F1. With
`distractors` on, LAR's other dialogues carry other actions and ITR's non-target dialogues other
keywords, so that recency (LAR) and recognising the person (ITR) are needed, not just finding the
one line that looks like an answer. Every context image is the person's reference cut-out composited
on a scene by `covip.content.scenes.SceneComposer`; the query image is a new composite (its own
background, scale, flip and lighting), so recognising the target is visual, never a byte match.
The dialogue lines are benchmark content (`covip/content/diagnostic_lines.yaml`), not prompts;
the questions and the headers of the direct layout come from the prompt file `diagnostic_questions`.

Answering. `direct`: one user turn with, per context entry, a header, the image and the dialogue,
then a header, the query image and the question (sampled like the authors' CAG answers).
`cag`: caption every item first (greedy, with the caption request of `covip.protocol.requests`), then
answer with the caption as the assistant's previous turn (`build_cag_request`).

Scoring and aggregation are separate: `score_diagnostics` fills per-row scores (None when the
response or its judging failed; never a silent 0), `summarize_diagnostics` averages the scored rows
per (policy, task, mode) in percent with a 95% bootstrap interval.
"""
