"""Stages 2-4 of the benchmark built in-process with the offline stand-ins, for tests that need real data."""

from __future__ import annotations

import io

# The offline stand-ins of stages 2-4 (query synthesis, filtering, embedding), as registry entries.
OFFLINE_STAGES_2_TO_4 = {
    "image_generator": {"backend": "local_compositor", "options": {"defect_rate": 0.0}},
    "verifier": {"backend": "local_pixel_verifier", "concurrency": 2},
    "embedder": {"backend": "local_color_texture"},
}


def offline_contexts(pool, prompts, registry, *, num_samples: int, image_size: int, seed: int):
    """Stages 2-4 on `pool` with the offline stand-ins of `registry` (OFFLINE_STAGES_2_TO_4):
    (queries, filter decisions, contexts)."""
    from covip.stages.filtering import FilterSettings, filter_queries
    from covip.stages.negatives import NegativeSettings, build_contexts, embed_concepts
    from covip.stages.synthesis import SynthesisSettings, synthesize_queries

    quiet = io.StringIO()
    queries = synthesize_queries(pool, registry.image_generator("image_generator"), prompts,
                                 SynthesisSettings(num_samples=num_samples, image_size=image_size), seed, progress_file=quiet)
    decisions = filter_queries(queries, pool, registry.chat("verifier"), prompts, FilterSettings(), progress_file=quiet)
    embeddings = embed_concepts(pool, registry.embedder("embedder"), progress_file=quiet)
    contexts = build_contexts(queries, decisions, embeddings, NegativeSettings(), seed, concepts_rows=pool)
    return queries, decisions, contexts
