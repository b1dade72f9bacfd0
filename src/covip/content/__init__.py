"""The benchmark's own content, used under every config: fact word lists, drawn concept art, scene
compositing and the diagnostic dialogues. Prose lives in data files beside this package's code."""
