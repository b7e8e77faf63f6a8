"""Engines start, stop and health-check replicas: ``local`` (processes on this machine) today."""
