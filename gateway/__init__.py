"""Gatehouse: the Django project, tenancy and the workflow engine.

Kept free of imports so the command-line client and the workflow validator start without
Django; the Celery app is loaded by GatewayConfig.ready().
"""
