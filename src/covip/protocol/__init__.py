"""The measurement protocol shared by stages and training: how a prompt with interleaved images is
laid out (`requests`) and how a judge is asked and its reply read (`judging`). Every stage that
captions, answers or judges builds its requests here, so the evaluation, the diagnostics and the
GSPO rewards measure with one protocol."""
