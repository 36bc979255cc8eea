"""gunicorn's entry point: `gunicorn webapp.wsgi:app`, configured by the environment."""

from webapp import create_app

app = create_app()
