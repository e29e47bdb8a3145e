"""Tasks: GLUE, SQuAD, instruction data, metrics, generation, teacher fine-tuning."""
