from diet_engine.cli import app

app()
