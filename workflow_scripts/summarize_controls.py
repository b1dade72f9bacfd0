"""Every policy's scores under every control, with the paired drop against intact; all change records."""
from collections import defaultdict

from covip.core import schemas
from covip.core.io import read_rows
from covip.core.metrics import policy_identities_from
from covip.stages.controls.effects import control_effects
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    smk = snakemake  # noqa: F821
    answers, responses = defaultdict(list), defaultdict(list)
    for condition, path in zip(smk.params.capeval_conditions, smk.input.capeval):
        answers[condition] += read_rows(path, schemas.CAPEVAL_ANSWERS)
    for condition, path in zip(smk.params.diagnostic_conditions, smk.input.diagnostics):
        responses[condition] += read_rows(path, schemas.DIAGNOSTIC_RESPONSES)
    captions = [row for path in smk.input.captions for row in read_rows(path, schemas.CAPTIONS)]
    effects = control_effects(answers, responses, n_bootstrap=smk.params.n_bootstrap, seed=run.seed,
                              confidence=smk.params.confidence, policy_identities=policy_identities_from(captions),
                              failed_calls=smk.params.failed_calls)
    run.write(effects, schemas.CONTROL_EFFECTS, "effects")
    run.write([row for path in smk.input.changes for row in read_rows(path, schemas.CONTROL_CHANGES)],
              schemas.CONTROL_CHANGES, "changes")
