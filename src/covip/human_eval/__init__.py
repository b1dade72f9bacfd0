"""Human evaluation: a pairwise caption-preference page and its votes database.

Raters see the context (concept photos with their dialogues), the new photo and two captions, A and
B, and choose the better one (or a tie) on two criteria. `plan` decides what each rater sees,
`study` reads it from a run's folder, `store` keeps the votes, `app` is the page, `command` the
`covip human-eval` command line. The analysis is the workflow stage `covip.stages.human_eval`.
"""
