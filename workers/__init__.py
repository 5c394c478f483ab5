"""Celery side of llm-refinery: the app (`workers.celery_app:app`) and its thin tasks."""
