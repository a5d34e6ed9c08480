"""The HTTP service: OpenAI-compatible Files, fine_tuning.jobs, models and graders endpoints."""
