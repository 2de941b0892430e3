"""Fine-tuning, evaluation and export of newsimpact models."""
