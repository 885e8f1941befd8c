"""Making and judging models: Matryoshka fine-tuning, `tune`, the re-ranker's training and the
evaluation metrics."""
