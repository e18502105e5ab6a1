"""DIET engine: continual dataset distillation for recommender systems (PyTorch, no web/SQL/Celery)."""
